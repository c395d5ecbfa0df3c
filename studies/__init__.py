"""One module per study: its sweep lives in conf/study/<name>.yaml, its analysis in `analyse(df, out_dir)`."""
