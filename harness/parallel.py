"""Parallel strategies: lay a built GPT out over the ranks, step it, and count what each rank holds.

  single      one process, one device
  ddp         DistributedDataParallel: every rank holds everything; gradients are all-reduced
  zero1       DDP + ZeroRedundancyOptimizer: optimizer state sharded across ranks (ZeRO stage 1)
  fsdp_zero2  FSDP2 `fully_shard(reshard_after_forward=False)`: gradients and optimizer state sharded, parameters
              gathered once per step and kept from forward to backward (ZeRO stage 2's memory during the step)
  fsdp_zero3  FSDP2 full sharding: parameters gathered per block and freed after use (ZeRO stage 3)
  tp          tensor parallel (DTensor): column-parallel QKV and MLP-up, row-parallel output and MLP-down,
              vocabulary-parallel embedding and head, sequence parallel on the LayerNorms and the residual stream
  pp          pipeline parallel (torch.distributed.pipelining): blocks split evenly into one stage per rank,
              `gpipe` or `1f1b` over `microbatches`; tied embeddings kept equal as Megatron does (the first and
              last stage each hold a copy and sum their gradients)
  fsdp_tp     2-D mesh (dp, tp): tp inside each group of `tp_degree` ranks, FSDP2 across the groups

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

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from models.gpt import sinusoid_rows

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


def problems(name: str, world: int, deg: Degrees, *, n_head: int, n_layer: int, batch_size: int,
             microbatches: int, schedule: str) -> str | None:
    """What makes this layout impossible for this model shape and batch, as one line; None when it fits."""
    if name not in STRATEGIES:
        return f"parallel.name={name!r}; known: {', '.join(STRATEGIES)}"
    if name == "single" and world != 1:
        return f"parallel=single runs one rank, got parallel.world_size={world}"
    if name != "single" and world < 2:
        return f"parallel={name} needs parallel.world_size >= 2, got {world}"
    if deg.dp * deg.tp * deg.pp != world:
        return f"parallel.tp_degree={deg.tp} does not divide parallel.world_size={world}"
    if n_head % deg.tp:
        return f"parallel={name}: tensor-parallel degree {deg.tp} does not divide model.n_head={n_head}"
    if deg.pp > n_layer:
        return f"parallel=pp: {deg.pp} pipeline stages (world_size) is more than model.n_layer={n_layer}"
    if batch_size % deg.dp:
        return f"task.batch_size={batch_size} does not split evenly over {deg.dp} data-parallel ranks"
    if name == "pp":
        if schedule not in SCHEDULES:
            return f"parallel.schedule={schedule!r}; known: {', '.join(SCHEDULES)}"
        if microbatches < 1 or batch_size % microbatches:
            return f"parallel.microbatches={microbatches} does not divide task.batch_size={batch_size}"
    return None


def unsupported_precision(name: str, precision: str) -> str | None:
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
    tied_copy: nn.Parameter | None = None
    params_in_step_bytes: int = 0
    extra: dict = field(default_factory=dict)


def local(model: nn.Module, device: torch.device) -> Layout:
    """A model on this process alone, for evaluation."""
    return Layout("single", model, None, Degrees(), 0, slice(None), device)


def build(name: str, model: nn.Module, make_optimizer, device: torch.device, batch_size: int, *,
          tp_degree: int | None = None, schedule: str = "1f1b", microbatches: int = 4, cast=contextlib.nullcontext) -> Layout:
    """Lay out `model` (built identically on every rank, same seed) for this rank. make_optimizer(module_or_params, zero=)"""
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
        tensor_parallel(model, mesh)
        return Layout(name, model, make_optimizer(model), deg, rank, rows(0), device)
    if name == "fsdp_tp":
        mesh = init_device_mesh(device.type, (deg.dp, deg.tp), mesh_dim_names=("dp", "tp"))
        tensor_parallel(model, mesh["tp"])
        _fully_shard(model, mesh["dp"], reshard_after_forward=True)
        dp_rank = mesh.get_local_rank("dp")
        return Layout(name, model, make_optimizer(model), deg, rank, rows(dp_rank), device,
                      dp_group=mesh.get_group("dp"), dp_sharded_params=True)
    if name == "pp":
        return _pipeline(model, make_optimizer, device, deg, rank, batch_size, schedule, microbatches, cast)
    raise ValueError(f"unknown parallel strategy {name!r}")


def _fully_shard(model: nn.Module, mesh, *, reshard_after_forward: bool) -> None:
    from torch.distributed.fsdp import fully_shard
    for block in [*model.blocks, *getattr(model, "decoder_blocks", [])]:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)


def tensor_parallel(model: nn.Module, mesh) -> None:
    """Megatron-style TP with sequence parallelism, on the modules by name (torchtitan's plan for Llama). An
    encoder-decoder's decoder blocks add cross-attention: its query and key-value projections column-parallel
    (the key-values from the all-gathered encoder output), its output projection row-parallel."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel, parallelize_module

    from models.positions import Rotary

    plan = {"wte": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1), use_local_output=False),
            "ln_f": SequenceParallel(),
            "lm_head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate())}
    for table in ("wpe", "wpe_encoder", "wpe_decoder"):
        if getattr(model, table, None) is not None:
            plan[table] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate(), use_local_output=False)
    decoder_blocks = [f"decoder_blocks.{i}" for i in range(len(getattr(model, "decoder_blocks", [])))]
    for block in [f"blocks.{i}" for i in range(len(model.blocks))] + decoder_blocks:
        plan.update({
            f"{block}.ln_attn": SequenceParallel(),
            f"{block}.attn.qkv": ColwiseParallel(input_layouts=Shard(1)),   # all-gather the sequence, local heads out
            f"{block}.attn.proj": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),  # reduce-scatter
            f"{block}.ln_mlp": SequenceParallel(),
            f"{block}.mlp.up": ColwiseParallel(input_layouts=Shard(1)),
            f"{block}.mlp.down": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
        })
    for block in decoder_blocks:
        plan.update({
            f"{block}.ln_cross": SequenceParallel(),
            f"{block}.cross.q": ColwiseParallel(input_layouts=Shard(1)),
            f"{block}.cross.kv": ColwiseParallel(input_layouts=Shard(1)),  # the encoder's output, all-gathered
            f"{block}.cross.proj": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
        })
    if decoder_blocks:
        plan["ln_encoder"] = SequenceParallel()
    tied = model.lm_head.weight is model.wte.weight
    parallelize_module(model, mesh, plan)
    if tied:  # both are split along the vocabulary (Shard(0)), so one DTensor serves both again
        model.lm_head.weight = model.wte.weight
    # Whatever the plan left (a sinusoid table) becomes a replicated DTensor; rotary frequencies act on local heads.
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
    """A contiguous slice of the GPT: the embeddings on the first stage, the final norm and head on the last."""

    def __init__(self, model: nn.Module, first_block: int, end_block: int, *, first: bool, last: bool, cast):
        super().__init__()
        self.first, self.last, self.cast = first, last, cast
        self.positions = model.cfg.positions
        self.wte = model.wte if first else None
        self.wpe = model.wpe if first else None
        if first and self.positions == "sinusoidal":
            self.register_buffer("sinusoids", model.sinusoids, persistent=False)
        self.blocks = nn.ModuleList(model.blocks[first_block:end_block])
        self.ln_f = model.ln_f if last else None
        self.lm_head = model.lm_head if last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.cast():
            if self.first:
                n = x.shape[1]
                x = self.wte(x)
                if self.wpe is not None:
                    x = x + self.wpe(torch.arange(n, device=x.device))
                elif self.positions == "sinusoidal":
                    x = x + sinusoid_rows(self.sinusoids, 0, n).to(x.dtype)
            for block in self.blocks:
                x = block(x)
            if self.last:
                x = self.lm_head(self.ln_f(x))
        return x


def _pipeline_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def stage_bounds(n_layer: int, stages: int) -> list[tuple[int, int]]:
    """Blocks per stage as even as they go, the earlier stages taking the remainder."""
    base, extra = divmod(n_layer, stages)
    bounds, start = [], 0
    for s in range(stages):
        end = start + base + (s < extra)
        bounds.append((start, end))
        start = end
    return bounds


def _pipeline(model, make_optimizer, device, deg: Degrees, rank: int, batch_size: int, schedule: str,
              microbatches: int, cast) -> Layout:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    stages = deg.pp
    first, last = rank == 0, rank == stages - 1
    lo, hi = stage_bounds(len(model.blocks), stages)[rank]
    module = PipelineStageModule(model, lo, hi, first=first, last=last, cast=cast)
    tied = model.lm_head.weight is model.wte.weight
    tied_copy = None
    if tied and last:
        # The last stage's head gets its own copy of the tied table; its gradient is summed with the first stage's.
        tied_copy = nn.Parameter(model.wte.weight.detach().clone())
        module.lm_head.weight = tied_copy
    module.to(device)
    stage = PipelineStage(module, rank, stages, device)
    schedule_class = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule]
    runner = schedule_class(stage, n_microbatches=microbatches, loss_fn=_pipeline_loss)
    layout = Layout("pp", module, make_optimizer(module), deg, rank, slice(0, batch_size), device,
                    schedule=runner, tied_copy=tied_copy)
    ends = dist.new_group([0, stages - 1]) if tied else None  # every rank joins new_group, members or not
    layout.extra = {"stage_blocks": [lo, hi], "tied": tied, "ends_group": ends}
    return layout


def forward_backward(layout: Layout, x: torch.Tensor, y: torch.Tensor, cast, scaler=None, *,
                     measure_params: bool = False) -> torch.Tensor:
    """Forward and backward on this rank's rows; returns the loss averaged over the whole global batch."""
    if layout.name == "pp":
        return _pipeline_step(layout, x, y)
    x, y = x[layout.rows], y[layout.rows]
    with cast():
        _, loss = layout.model(x, y)
    if measure_params:  # what the parameters occupy mid-step (FSDP has gathered them by now)
        layout.params_in_step_bytes = tensor_bytes(layout.model.parameters())
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if layout.degrees.dp > 1:  # every rank must see the same loss, or one rank's NaN stops it alone mid-collective
        loss = loss.detach().clone()
        dist.all_reduce(loss, group=layout.dp_group)
        loss /= layout.degrees.dp
    return loss


def _pipeline_step(layout: Layout, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    losses: list[torch.Tensor] = []
    if layout.model.first:
        layout.schedule.step(x)
    elif layout.model.last:
        layout.schedule.step(target=y, losses=losses)
    else:
        layout.schedule.step()
    if layout.tied_copy is not None or (layout.model.first and layout.extra["tied"]):
        grad = layout.tied_copy.grad if layout.tied_copy is not None else layout.model.wte.weight.grad
        dist.all_reduce(grad, group=layout.extra["ends_group"])
    loss = torch.stack(losses).mean() if losses else torch.zeros((), device=layout.device)
    dist.broadcast(loss, src=layout.degrees.pp - 1)
    return loss


def clip_grad_norm(layout: Layout, max_norm: float) -> torch.Tensor:
    """Clip the gradient of the whole model by its global 2-norm, whichever rank holds which part; returns the norm
    as a device tensor (reading it would make the host wait for the device)."""
    params = [p for p in layout.model.parameters() if p.grad is not None]
    if layout.name != "pp":
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    own = [p for p in params if p is not layout.tied_copy]  # the tied table counted once, on the first stage
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
            _, loss = model(x, y)
        return float(loss)
    module, rank, stages = layout.model, layout.rank, layout.degrees.pp
    if module.first:
        h = module(x)
    else:
        # the residual stream keeps the parameters' dtype (autocast's narrower block outputs are added into it)
        h = torch.empty((*x.shape, module.blocks[0].ln_attn.normalized_shape[0]), device=layout.device,
                        dtype=next(module.parameters()).dtype)
        dist.recv(h, src=rank - 1)
        h = module(h)
    if not module.last:
        dist.send(h.contiguous(), dst=rank + 1)
        loss = torch.zeros((), device=layout.device)
    else:
        loss = _pipeline_loss(h, y).reshape(())
    dist.broadcast(loss, src=stages - 1)
    return float(loss)


def tensor_bytes(tensors) -> int:
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
    return {"param_bytes": tensor_bytes(params),
            "param_bytes_in_step": layout.params_in_step_bytes or tensor_bytes(params),
            "grad_bytes": tensor_bytes(p.grad for p in params if p.grad is not None),
            "optimizer_bytes": tensor_bytes(optimizer_state_tensors(layout.optimizer))}


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
