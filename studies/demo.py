"""The demo study (`make demo`): a small IsoFLOP grid on the stdlib corpus, analysed as every IsoFLOP study is."""
from studies.isoflop import analyse

__all__ = ["analyse"]
