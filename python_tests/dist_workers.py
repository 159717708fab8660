"""Worker functions for the 2-process tests (spawned by test_distributed.py)."""
import functools
import gc
import os

import torch
import torch.distributed as dist

import mgpp_ext

HYPER = dict(total_steps=12, num_train_examples=64, target_sparsity=0.75, initial_sparsity=0.25,
             initial_warmup_steps=2, final_finetune_steps=3, prune_interval=3,
             sigma0_sq=1e-8, sigma1_sq=0.5, weight_decay=0.01)


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.ReLU(), torch.nn.Linear(40, 37),
                               torch.nn.ReLU(), torch.nn.Linear(37, 5))


def batches(steps, batch=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 24, generator=g), torch.randint(0, 5, (batch,), generator=g))
            for _ in range(steps)]


def counted_step(opt, comm):
    """opt.step(), appending to ``comm`` the bytes its collectives sent."""
    sent = 0
    real = dist.all_reduce

    def all_reduce(tensor, *args, **kwargs):
        nonlocal sent
        sent += tensor.numel() * tensor.element_size()
        return real(tensor, *args, **kwargs)

    dist.all_reduce = all_reduce
    try:
        opt.step()
    finally:
        dist.all_reduce = real
    comm.append(sent)


def train(model, opt, data, rank=0, world=1, record=None, comm=None):
    for x, y in data:
        per = x.shape[0] // world
        xs, ys = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        loss = torch.nn.functional.cross_entropy(model(xs), ys)
        loss.backward()
        if comm is not None:
            counted_step(opt, comm)
        else:
            opt.step()
        opt.zero_grad()
        if record is not None:
            record.append(opt.last_threshold)


def make_optimizer(params, lr, method="mgpp"):
    if method == "mgpp":
        return mgpp_ext.MGPP(params, lr=lr, **HYPER)
    kw = {k: v for k, v in HYPER.items() if k not in ("num_train_examples", "sigma0_sq", "sigma1_sq")}
    return {"gmp": mgpp_ext.GMP, "platon": mgpp_ext.PLATON}[method](params, lr=lr, **kw)


def single_process(lr, method="mgpp", data=None):
    """The reference: one process, the whole global batch."""
    model = make_model()
    opt = make_optimizer(model.parameters(), lr, method)
    thresholds = []
    train(model, opt, batches(HYPER["total_steps"]) if data is None else data, record=thresholds)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, thresholds


def _init(rank, world, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def in_process_group(body):
    """``body(rank, world, *args)`` as an ``mp.spawn`` worker
    ``(rank, world, port, *args)`` inside a gloo process group.

    FSDP2 modules and device meshes hold the process group in reference
    cycles, so it outlives ``destroy_process_group()`` until a garbage
    collection. Left to the collection at interpreter exit, a gloo worker
    thread that is still releasing the last collective's tensors needs the GIL
    while Python finalises, and the process aborts ("terminate called without
    an active exception"). Collecting once ``body``'s frame is gone frees the
    group while the interpreter is whole."""
    @functools.wraps(body)
    def worker(rank, world, port, *args):
        _init(rank, world, port)
        try:
            body(rank, world, *args)
        finally:
            dist.destroy_process_group()
            gc.collect()
    return worker


@in_process_group
def ddp_worker(rank, world, lr, out_dir):
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    opt = mgpp_ext.MGPP(model.parameters(), lr=lr, **HYPER)
    thresholds = []
    train(model, opt, batches(HYPER["total_steps"]), rank, world, thresholds)
    state = {k.removeprefix("module."): v for k, v in model.state_dict().items()}
    torch.save({"state": state, "thresholds": thresholds}, os.path.join(out_dir, f"ddp{rank}.pt"))


def sharded_model(mesh):
    """make_model() with every Linear, then the whole, sharded by FSDP2."""
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@in_process_group
def fsdp_worker(rank, world, lr, out_dir, resume_at=None, method="mgpp"):
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))

    def build():
        model = sharded_model(mesh)
        return model, make_optimizer(model.parameters(), lr, method)

    model, opt = build()
    data = batches(HYPER["total_steps"])
    thresholds, comm = [], []
    if resume_at is None:
        train(model, opt, data, rank, world, thresholds, comm)
    else:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        train(model, opt, data[:resume_at], rank, world, thresholds)
        msd, osd = get_state_dict(model, opt)
        ckpt = os.path.join(out_dir, "dcp")
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=ckpt)
        model, opt = build()  # a fresh model and optimizer, as after a restart
        msd, osd = get_state_dict(model, opt)
        sd = {"model": msd, "optim": osd}
        dcp.load(sd, checkpoint_id=ckpt)
        set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        train(model, opt, data[resume_at:], rank, world, thresholds)
    state = {k: v.full_tensor() for k, v in model.state_dict().items()}
    masks = [opt.state[p]["mask"].full_tensor() for _, _, p in opt._prunable()]
    sparsity = opt.sparsity()["overall"]
    events = [opt.schedule.is_event(t) for t in range(HYPER["total_steps"])]
    torch.save({"state": state, "thresholds": thresholds, "masks": masks, "sparsity": sparsity,
                "comm": comm, "events": events},
               os.path.join(out_dir, f"fsdp{rank}.pt"))


# Calls whose gradient is poisoned on rank 1 only: between events (t = 4, 5)
# and on the event at t = 6 (the step index lags the call by the skips).
BAD_CALLS = (4, 6, 8)
SKIP_CALLS = HYPER["total_steps"] + len(BAD_CALLS)


@in_process_group
def fsdp_skip_worker(rank, world, out_dir, defer):
    """on_nonfinite='skip' under FSDP2 with an inf/NaN on one rank only: every
    rank skips the same steps, whether the check is read at once or left on
    the device (``defer``) and read by the next call."""
    from torch.distributed.device_mesh import init_device_mesh

    model = sharded_model(init_device_mesh("cpu", (world,)))
    opt = mgpp_ext.MGPP(model.parameters(), lr=1e-2, on_nonfinite="skip", **HYPER)
    opt._defer_finite_check = defer
    for call, (x, y) in enumerate(batches(SKIP_CALLS)):
        per = x.shape[0] // world
        xs, ys = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        torch.nn.functional.cross_entropy(model(xs), ys).backward()
        if rank == 1 and call in BAD_CALLS:
            next(model.parameters()).grad.to_local().view(-1)[0] = float("nan")
        opt.step()
        opt.zero_grad()
    state = {k: v.full_tensor() for k, v in model.state_dict().items()}
    torch.save({"state": state, "record": opt.schedule_state()},
               os.path.join(out_dir, f"skip{rank}.pt"))


NM_HYPER = dict(total_steps=12, target_sparsity=0.5, initial_warmup_steps=2, final_finetune_steps=3,
                prune_interval=3, pattern="2:4")


def nm_groups(model):
    """The first two Linear weights pruned 2:4 (input dims 24 and 40); the rest dense."""
    pruned = [model[0].weight, model[2].weight]
    rest = [p for p in model.parameters() if all(p is not q for q in pruned)]
    return [{"params": pruned, "prune": True}, {"params": rest, "prune": False}]


def nm_single_process():
    """The last threshold of GMP 2:4 at lr = 0 in one process (the reference)."""
    model = make_model()
    opt = mgpp_ext.GMP(nm_groups(model), lr=0.0, **NM_HYPER)
    train(model, opt, batches(NM_HYPER["total_steps"]))
    return opt.last_threshold


@in_process_group
def fsdp_guard_worker(rank, world, out_dir):
    """Two FSDP2 cases: a prunable set that mixes sharded and plain weights is
    refused before anything changes; GMP 2:4's last threshold is the global
    one on every rank."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    mixed = make_model()
    fully_shard(mixed[0], mesh=mesh)  # the other Linears stay plain
    opt = mgpp_ext.GMP(mixed.parameters(), lr=1e-2, **{k: v for k, v in NM_HYPER.items() if k != "pattern"})
    x, y = batches(1)[0]
    torch.nn.functional.cross_entropy(mixed(x), y).backward()
    try:
        opt.step()
        mixed_error = None
    except RuntimeError as e:
        mixed_error = str(e)
    mixed_step = opt.current_step
    model = sharded_model(mesh)
    opt = mgpp_ext.GMP(nm_groups(model), lr=0.0, **NM_HYPER)
    train(model, opt, batches(NM_HYPER["total_steps"]), rank, world)
    torch.save({"mixed_error": mixed_error, "mixed_step": mixed_step, "nm_threshold": opt.last_threshold},
               os.path.join(out_dir, f"guard{rank}.pt"))
