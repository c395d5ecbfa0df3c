"""Parallel strategies: lay a built model out over the ranks, step it, and count what each rank holds.

  single      one process, one device
  ddp         DistributedDataParallel: every rank holds everything; gradients are all-reduced
  zero1       DDP + ZeroRedundancyOptimizer: optimizer state sharded across ranks (ZeRO stage 1)
  fsdp_zero2  FSDP2 `fully_shard(reshard_after_forward=False)`: gradients and optimizer state sharded, parameters
              gathered once per step and kept from forward to backward (ZeRO stage 2's memory during the step)
  fsdp_zero3  FSDP2 full sharding: parameters gathered per block and freed after use (ZeRO stage 3)
  tp          tensor parallel (DTensor) by the family's plan (its spec's tp_plan: Megatron's column- and row-parallel
              projections with sequence parallelism)
  pp          pipeline parallel (torch.distributed.pipelining): the spec's (embed, blocks, head) split evenly into
              one stage per rank, `gpipe` or `1f1b` over `microbatches`; tied embeddings kept equal as Megatron does
              (the first and last stage each hold a copy and sum their gradients)
  fsdp_tp     2-D mesh (dp, tp): tp inside each group of `tp_degree` ranks, FSDP2 across the groups

ddp, zero1 and the FSDP strategies work for any module (FSDP's units: the entries of its outermost ModuleLists,
its repeated blocks); tp and pp need the family's spec to give a plan and a split.

Every strategy trains the same global batch as `single` (data-parallel ranks take equal slices of it), so the loss
trajectories agree; tests/test_parallel.py proves it.

ZeRO memory model (Rajbhandari et al. 2020, section 5): with Psi parameters, p bytes per parameter, g per gradient
and K per parameter of optimizer state, a data-parallel rank of N_d holds
  stage 0 (ddp):  (p + g + K) Psi
  stage 1:        (p + g) Psi + K Psi / N_d
  stage 2:        p Psi + (g + K) Psi / N_d
  stage 3:        (p + g + K) Psi / N_d
The paper's mixed-precision Adam has p = g = 2 and K = 12 (fp32 master weights, momentum, variance). Here the byte
widths are those of the precision mode in effect: fp32 and autocast modes keep fp32 weights (the master copy is the
weights): p = g = 4, K = 8; bf16_pure: p = g = 2, K = 4. Psi is the parameters of this rank's model-parallel share
(all of them, except under tp, pp and fsdp_tp).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from models.spec import IGNORE, ModelSpec, token_loss

STRATEGIES = ("single", "ddp", "zero1", "fsdp_zero2", "fsdp_zero3", "tp", "pp", "fsdp_tp")
ZERO_STAGE = {"single": 0, "ddp": 0, "zero1": 1, "fsdp_zero2": 2, "fsdp_zero3": 3, "tp": 0, "pp": 0, "fsdp_tp": 3}
SCHEDULES = ("gpipe", "1f1b")


@dataclass(frozen=True)
class Degrees:
    dp: int = 1
    tp: int = 1
    pp: int = 1


def degrees(name: str, world: int, tp_degree: int | None = None) -> Degrees:
    if name == "single":
        return Degrees()
    if name == "tp":
        return Degrees(tp=world)
    if name == "pp":
        return Degrees(pp=world)
    if name == "fsdp_tp":
        tp = tp_degree or 2
        return Degrees(dp=world // tp, tp=tp)
    return Degrees(dp=world)


def problems(name: str, world: int, deg: Degrees, *, heads: dict[str, int], n_layer: int | None, batch_size: int,
             microbatches: int, schedule: str, micro_batch: int | None = None) -> str | None:
    """What makes this layout impossible for this model shape and batch, as one line; None when it fits."""
    if name not in STRATEGIES:
        return f"parallel.name={name!r}; known: {', '.join(STRATEGIES)}"
    if name == "single" and world != 1:
        return f"parallel=single runs one rank, got parallel.world_size={world}"
    if name != "single" and world < 2:
        return f"parallel={name} needs parallel.world_size >= 2, got {world}"
    if deg.dp * deg.tp * deg.pp != world:
        return f"parallel.tp_degree={deg.tp} does not divide parallel.world_size={world}"
    for key, count in heads.items():
        if count % deg.tp:
            return f"parallel={name}: tensor-parallel degree {deg.tp} does not divide {key}={count}"
    if n_layer is not None and deg.pp > n_layer:
        return f"parallel=pp: {deg.pp} pipeline stages (world_size) is more than model.n_layer={n_layer}"
    if batch_size % deg.dp:
        return f"task.batch_size={batch_size} does not split evenly over {deg.dp} data-parallel ranks"
    if micro_batch is not None and name == "pp":
        return (f"task.micro_batch_size={micro_batch} with parallel=pp: the pipeline splits the batch itself "
                "(parallel.microbatches)")
    problem = micro_batch_problem(batch_size, deg.dp, micro_batch)
    if problem:
        return problem
    if name == "pp":
        if schedule not in SCHEDULES:
            return f"parallel.schedule={schedule!r}; known: {', '.join(SCHEDULES)}"
        if microbatches < 1 or batch_size % microbatches:
            return f"parallel.microbatches={microbatches} does not divide task.batch_size={batch_size}"
    return None


def micro_batch_problem(batch_size: int, dp: int, micro_batch: int | None) -> str | None:
    """Whether each of `dp` ranks' share of the batch splits into micro-batches of `micro_batch` sequences."""
    if micro_batch is None or (batch_size // dp) % micro_batch == 0:
        return None
    share = f"each of {dp} data-parallel ranks' {batch_size // dp} sequences" if dp > 1 else f"task.batch_size={batch_size}"
    return f"task.micro_batch_size={micro_batch} does not divide {share}"


def unsupported(name: str, precision: str) -> str | None:
    if precision == "fp16" and name not in ("single", "ddp", "zero1"):
        return f"precision=fp16 with parallel={name}: gradient scaling of sharded or pipelined gradients is not supported; use bf16"
    if precision == "fp8" and name in ("tp", "pp", "fsdp_tp"):
        return f"precision=fp8 with parallel={name} is not supported; fp8 runs with single, ddp, zero1 and fsdp"
    return None


@dataclass
class Layout:
    """One rank's view of a parallel model: what it trains, on which rows of the global batch, and how it steps."""
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    degrees: Degrees
    rank: int
    rows: slice
    device: torch.device
    dp_group: object = None
    dp_sharded_params: bool = False
    schedule: object = None              # pp: this rank's pipeline schedule (its model is its stage)
    tied_copies: list = field(default_factory=list)   # pp, last stage: its copies of weights tied to the first's
    params_in_step_bytes: int = 0
    extra: dict = field(default_factory=dict)
    loss: Callable = token_loss          # the training loss (compile=true: compiled, harness/compiling.py)


def local(model: nn.Module, device: torch.device) -> Layout:
    """A model on this process alone, for evaluation."""
    return Layout("single", model, None, Degrees(), 0, slice(None), device)


def build(name: str, model: nn.Module, spec: ModelSpec, make_optimizer, device: torch.device, batch_size: int, *,
          tp_degree: int | None = None, schedule: str = "1f1b", microbatches: int = 4, cast=contextlib.nullcontext) -> Layout:
    """Lay out `model` (built identically on every rank, same seed) for this rank, by its family's `spec`.
    make_optimizer(module_or_params, zero=)"""
    if name == "single":
        return Layout(name, model, make_optimizer(model), Degrees(), 0, slice(0, batch_size), device)
    world, rank = dist.get_world_size(), dist.get_rank()
    deg = degrees(name, world, tp_degree)
    rows_per_rank = batch_size // deg.dp

    def rows(dp_rank: int) -> slice:
        return slice(dp_rank * rows_per_rank, (dp_rank + 1) * rows_per_rank)

    if name in ("ddp", "zero1"):
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        return Layout(name, wrapped, make_optimizer(model, zero=name == "zero1"), deg, rank, rows(rank), device)

    from torch.distributed.device_mesh import init_device_mesh
    if name in ("fsdp_zero2", "fsdp_zero3"):
        mesh = init_device_mesh(device.type, (world,))
        _fully_shard(model, mesh, reshard_after_forward=name == "fsdp_zero3")
        return Layout(name, model, make_optimizer(model), deg, rank, rows(rank), device, dp_sharded_params=True)
    if name == "tp":
        mesh = init_device_mesh(device.type, (world,))
        tensor_parallel(model, mesh, spec.tp_plan(model))
        return Layout(name, model, make_optimizer(model), deg, rank, rows(0), device)
    if name == "fsdp_tp":
        mesh = init_device_mesh(device.type, (deg.dp, deg.tp), mesh_dim_names=("dp", "tp"))
        tensor_parallel(model, mesh["tp"], spec.tp_plan(model))
        _fully_shard(model, mesh["dp"], reshard_after_forward=True)
        dp_rank = mesh.get_local_rank("dp")
        return Layout(name, model, make_optimizer(model), deg, rank, rows(dp_rank), device,
                      dp_group=mesh.get_group("dp"), dp_sharded_params=True)
    if name == "pp":
        return _pipeline(spec.pipeline_parts(model), make_optimizer, device, deg, rank, batch_size, schedule,
                         microbatches, cast)
    raise ValueError(f"unknown parallel strategy {name!r}")


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The entries of the outermost ModuleLists: a transformer's blocks, whatever it names them."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    inner = {id(sub) for outer in lists for sub in outer.modules() if sub is not outer}
    return [block for blocks in lists if id(blocks) not in inner for block in blocks]


def _fully_shard(model: nn.Module, mesh, *, reshard_after_forward: bool) -> None:
    from torch.distributed.fsdp import fully_shard
    for block in repeated_blocks(model):
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)


def tensor_parallel(model: nn.Module, mesh, plan: dict) -> None:
    """Apply a TP plan (module name -> ColwiseParallel, RowwiseParallel, SequenceParallel, ...). Weights tied before
    (a head sharing the token table) are tied again after; whatever the plan left becomes a replicated DTensor, so
    every parameter lives on the mesh. Rotary frequencies stay plain tensors: they act on each rank's local heads."""
    from torch.distributed.tensor import Replicate, distribute_tensor
    from torch.distributed.tensor.parallel import parallelize_module

    from models.positions import Rotary

    places: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for key, param in module._parameters.items():
            if param is not None:
                places.setdefault(id(param), []).append((module, key))
    parallelize_module(model, mesh, plan)
    for (owner, key), *others in (p for p in places.values() if len(p) > 1):
        for module, other_key in others:  # both were split alike (the table and the head along the vocabulary)
            setattr(module, other_key, getattr(owner, key))
    for module in model.modules():
        if isinstance(module, Rotary):
            continue
        for key, param in list(module._parameters.items()):
            if param is not None and not hasattr(param, "device_mesh"):
                module.register_parameter(key, nn.Parameter(distribute_tensor(param.data, mesh, [Replicate()])))
        for key, buffer in list(module._buffers.items()):
            if buffer is not None and not hasattr(buffer, "device_mesh"):
                module._buffers[key] = distribute_tensor(buffer, mesh, [Replicate()])


class PipelineStageModule(nn.Module):
    """A contiguous slice of a model: its embedding on the first stage, its final norm and head on the last."""

    def __init__(self, embed: nn.Module, blocks: list[nn.Module], head: nn.Module, *, first: bool, last: bool, cast):
        super().__init__()
        self.first, self.last, self.cast = first, last, cast
        self.embed = embed if first else None
        self.blocks = nn.ModuleList(blocks)
        self.head = head if last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.cast():
            if self.first:
                x = self.embed(x)
            for block in self.blocks:
                x = block(x)
            if self.last:
                x = self.head(x)
        return x


def _pipeline_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return token_loss(logits, targets).reshape(())


def stage_bounds(n_layer: int, stages: int) -> list[tuple[int, int]]:
    """Blocks per stage as even as they go, the earlier stages taking the remainder."""
    base, extra = divmod(n_layer, stages)
    bounds, start = [], 0
    for s in range(stages):
        end = start + base + (s < extra)
        bounds.append((start, end))
        start = end
    return bounds


def tied_weights(embed: nn.Module, head: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, name) of each of the head's parameters that is one of the embedding's (a tied unembedding)."""
    shared = {id(p) for p in embed.parameters()}
    return [(module, key) for module in head.modules() for key, p in module._parameters.items()
            if p is not None and id(p) in shared]


def _pipeline(parts: tuple, make_optimizer, device, deg: Degrees, rank: int, batch_size: int, schedule: str,
              microbatches: int, cast) -> Layout:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    embed, blocks, head = parts
    stages = deg.pp
    first, last = rank == 0, rank == stages - 1
    lo, hi = stage_bounds(len(blocks), stages)[rank]
    tied = tied_weights(embed, head)
    module = PipelineStageModule(embed, list(blocks)[lo:hi], head, first=first, last=last, cast=cast)
    tied_copies, tied_originals = [], []
    for owner, key in tied:
        if last:  # the last stage's head gets its own copy; its gradient is summed with the first stage's
            copy = nn.Parameter(getattr(owner, key).detach().clone())
            setattr(owner, key, copy)
            tied_copies.append(copy)
        elif first:
            tied_originals.append(getattr(owner, key))
    module.to(device)
    stage = PipelineStage(module, rank, stages, device)
    schedule_class = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule]
    runner = schedule_class(stage, n_microbatches=microbatches, loss_fn=_pipeline_loss)
    layout = Layout("pp", module, make_optimizer(module), deg, rank, slice(0, batch_size), device,
                    schedule=runner, tied_copies=tied_copies)
    ends = dist.new_group([0, stages - 1]) if tied else None  # every rank joins new_group, members or not
    layout.extra = {"stage_blocks": [lo, hi], "tied": tied_copies or tied_originals, "ends_group": ends}
    return layout


def forward_backward(layout: Layout, x: torch.Tensor, y: torch.Tensor, cast, scaler=None, *,
                     micro_batch: int | None = None, measure_params: bool = False) -> torch.Tensor:
    """Forward and backward on this rank's rows, `micro_batch` sequences at a time (None: all at once), the
    gradients accumulated; returns the loss averaged over the whole global batch."""
    if layout.name == "pp":
        return _pipeline_step(layout, x, y)
    x, y = x[layout.rows], y[layout.rows]
    parts = accumulation_steps(x.shape[0], micro_batch)
    predicted = (y != IGNORE).sum() if parts > 1 else None   # each part's loss: its summed loss over the batch's count
    losses = []
    for i, (x_part, y_part) in enumerate(zip(x.chunk(parts), y.chunk(parts))):
        with gradient_sync(layout, last=i == parts - 1):
            with cast():
                part_loss = layout.loss(layout.model(x_part), y_part, predicted)
            if measure_params and i == 0:  # what the parameters occupy mid-step (FSDP has gathered them by now)
                layout.params_in_step_bytes = held_bytes(layout.model.parameters())
            (scaler.scale(part_loss) if scaler is not None else part_loss).backward()
        losses.append(part_loss.detach())
    loss = losses[0] if parts == 1 else torch.stack(losses).sum()
    if layout.degrees.dp > 1:  # every rank must see the same loss, or one rank's NaN stops it alone mid-collective
        loss = loss.detach().clone()
        dist.all_reduce(loss, group=layout.dp_group)
        loss /= layout.degrees.dp
    return loss


def accumulation_steps(rows: int, micro_batch: int | None) -> int:
    """Forwards and backwards per optimizer step for a rank's `rows` sequences."""
    return rows // micro_batch if micro_batch else 1


def gradient_sync(layout: Layout, last: bool):
    """DDP all-reduces the gradients in the backward of the last micro-batch only (no_sync before it); the other
    layouts reduce each micro-batch's (FSDP accumulates the reduced shards)."""
    if layout.name in ("ddp", "zero1") and not last:
        return layout.model.no_sync()
    return contextlib.nullcontext()


def _pipeline_step(layout: Layout, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    losses: list[torch.Tensor] = []
    if layout.model.first:
        layout.schedule.step(x)
    elif layout.model.last:
        layout.schedule.step(target=y, losses=losses)
    else:
        layout.schedule.step()
    for weight in layout.extra["tied"]:   # on the first and last stage: the tied weights' two gradients, summed
        dist.all_reduce(weight.grad, group=layout.extra["ends_group"])
    loss = torch.stack(losses).mean() if losses else torch.zeros((), device=layout.device)
    dist.broadcast(loss, src=layout.degrees.pp - 1)
    return loss


def clip_grad_norm(layout: Layout, max_norm: float) -> torch.Tensor:
    """Clip the gradient of the whole model by its global 2-norm, whichever rank holds which part; returns the norm
    as a device tensor (reading it would make the host wait for the device)."""
    params = [p for p in layout.model.parameters() if p.grad is not None]
    if layout.name != "pp":
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    own = [p for p in params if not any(p is copy for copy in layout.tied_copies)]  # a tied table counted once
    squares = torch.zeros((), dtype=torch.float32, device=layout.device)
    for p in own:
        squares += p.grad.float().pow(2).sum()
    dist.all_reduce(squares)
    norm = squares.sqrt()
    coefficient = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p in params:
        p.grad.mul_(coefficient.to(p.grad.dtype))
    return norm


@torch.no_grad()
def eval_loss(layout: Layout, x: torch.Tensor, y: torch.Tensor, cast) -> float:
    """Mean loss of one evaluation chunk, the same number on every rank."""
    if layout.name != "pp":
        model = layout.model.module if hasattr(layout.model, "module") else layout.model
        with cast():
            loss = token_loss(model(x), y)
        return float(loss)
    module, rank, stages = layout.model, layout.rank, layout.degrees.pp
    if module.first:
        h = module(x)
    else:  # the activation's shape first (the stages know their own modules, not each other's widths)
        shape = torch.empty(3, dtype=torch.int64, device=layout.device)
        dist.recv(shape, src=rank - 1)
        # the residual stream keeps the parameters' dtype (autocast's narrower block outputs are added into it)
        h = torch.empty(tuple(shape.tolist()), device=layout.device, dtype=next(module.parameters()).dtype)
        dist.recv(h, src=rank - 1)
        h = module(h)
    if not module.last:
        dist.send(torch.tensor(h.shape, dtype=torch.int64, device=layout.device), dst=rank + 1)
        dist.send(h.contiguous(), dst=rank + 1)
        loss = torch.zeros((), device=layout.device)
    else:
        loss = _pipeline_loss(h, y).reshape(())
    dist.broadcast(loss, src=stages - 1)
    return float(loss)


def held_bytes(tensors) -> int:
    """Bytes these tensors hold on this rank (a DTensor's local shard), each storage counted once."""
    seen, total = set(), 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), local.numel())
        if local.numel() and key not in seen:
            seen.add(key)
            total += local.numel() * local.element_size()
    return total


def optimizer_state_tensors(optimizer: torch.optim.Optimizer):
    inner = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer keeps this rank's shard in .optim
    for state in inner.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.dim() > 0:
                yield value


def rank_memory(layout: Layout) -> dict:
    """Bytes this rank holds in parameters (at rest and mid-step), gradients and optimizer state."""
    reshard(layout.model)
    params = list(layout.model.parameters())
    return {"param_bytes": held_bytes(params),
            "param_bytes_in_step": layout.params_in_step_bytes or held_bytes(params),
            "grad_bytes": held_bytes(p.grad for p in params if p.grad is not None),
            "optimizer_bytes": held_bytes(optimizer_state_tensors(layout.optimizer))}


def reshard(model: nn.Module) -> None:
    """FSDP2 without resharding after forward leaves an evaluation's gathered parameters in place; free them."""
    from torch.distributed.fsdp import FSDPModule
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def model_parallel_params(layout: Layout) -> int:
    """Psi of the ZeRO model: the parameters this rank's model-parallel share holds before data-parallel sharding."""
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel()
                for p in {id(p): p for p in layout.model.parameters()}.values())
    if not layout.dp_sharded_params:
        return local
    total = torch.tensor(local, dtype=torch.float64, device=layout.device)
    dist.all_reduce(total, group=layout.dp_group)
    return int(total)


def zero_prediction(psi: int, stage: int, dp: int, param_bytes: int, grad_bytes: int, optimizer_bytes: int) -> dict:
    """Bytes per rank the ZeRO paper's model predicts (see the module docstring)."""
    return {"param_bytes": psi * param_bytes / (dp if stage >= 3 else 1),
            "grad_bytes": psi * grad_bytes / (dp if stage >= 2 else 1),
            "optimizer_bytes": psi * optimizer_bytes / (dp if stage >= 1 else 1)}
