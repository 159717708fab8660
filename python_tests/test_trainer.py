"""Hugging Face Trainer and accelerate integration: real Trainer runs on CPU."""
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

import mgpp_ext  # noqa: E402
from mgpp_ext.integrations import MGPPCallback, TrainerMGPP, add_mgpp_callback, unwrap_optimizer  # noqa: E402


def tiny_bert(num_labels=3, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=37,
                                  max_position_embeddings=32, num_labels=num_labels)
    return transformers.BertForSequenceClassification(cfg)


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n=48, length=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 64, (n, length), generator=g)
        self.labels = self.ids[:, 0] % 3

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class Recorder(transformers.TrainerCallback):
    """Stands in for a reporting integration (TensorBoard, W&B): keeps what it is given."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def assert_pruned_to(opt, target):
    """At least floor(target * N) prunable weights are exactly zero."""
    prunable = [p for g in opt.param_groups if g["prune"] for p in g["params"]]
    n = sum(p.numel() for p in prunable)
    zeros = sum(int((p == 0).sum()) for p in prunable)
    assert zeros >= math.floor(target * n), (zeros, n)


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=4,
                learning_rate=1e-3, logging_steps=2, report_to=[], save_strategy="no",
                use_cpu=True, disable_tqdm=True, seed=0)
    base.update(kw)
    return transformers.TrainingArguments(**base)


def test_trainer_with_optimizer_instance(tmp_path):
    model = tiny_bert()
    data = ToyDataset()
    steps = 4 * math.ceil(len(data) / 8)
    opt = mgpp_ext.MGPP(mgpp_ext.prunable_param_groups(model), lr=1e-3, total_steps=steps,
                        num_train_examples=len(data), target_sparsity=0.8,
                        initial_warmup_steps=4, final_finetune_steps=4, prune_interval=4,
                        sigma1_sq=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - t / steps)
    trainer = transformers.Trainer(model=model, args=make_args(tmp_path), train_dataset=data,
                                   optimizers=(opt, sched))
    add_mgpp_callback(trainer)
    rec = Recorder()
    trainer.add_callback(rec)
    trainer.train()
    assert opt.current_step == steps
    assert_pruned_to(opt, 0.8)
    logged = [l for l in rec.logs if "mgpp/sparsity" in l]
    assert logged, "the reporting callback never saw MGPP's values"
    last = logged[-1]
    assert last["mgpp/sparsity"] == opt.sparsity()["overall"] > 0.79
    assert last["mgpp/threshold"] > 0
    assert "mgpp/sparsity/bert.encoder.layer.0.attention.self.query.weight" in last
    assert last["mgpp/lambda"] == 0.0  # prior off in the final phase


def test_trainer_builds_optimizer_and_counts_optimizer_steps(tmp_path):
    """optimizer_cls_and_kwargs: total_steps comes from the Trainer, which
    counts optimizer steps (micro-batches / gradient_accumulation_steps)."""
    model = tiny_bert()
    data = ToyDataset(n=48)
    kwargs = dict(model=model, lr=1e-3, num_train_examples=len(data), target_sparsity=0.7,
                  initial_warmup_steps=2, final_finetune_steps=2, prune_interval=2, sigma1_sq=1.0)
    args = make_args(tmp_path, gradient_accumulation_steps=2, num_train_epochs=4)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   optimizer_cls_and_kwargs=(TrainerMGPP, kwargs))
    add_mgpp_callback(trainer)
    trainer.train()
    opt = unwrap_optimizer(trainer.optimizer)
    micro_batches = 4 * math.ceil(len(data) / 8)
    assert trainer.state.max_steps == micro_batches // 2
    assert opt.schedule.total_steps == micro_batches // 2
    assert opt.current_step == micro_batches // 2
    assert_pruned_to(opt, 0.7)
    # Only the default selection was pruned: embeddings and classifier are dense.
    names = {n for g in opt.param_groups if g["prune"] for n in g["param_names"]}
    assert names and all(".encoder.layer." in n for n in names)
    assert (model.bert.embeddings.word_embeddings.weight != 0).float().mean() > 0.9


def test_trainer_mgpp_resumes_with_total_steps_left_to_the_trainer(tmp_path):
    """The Trainer loads a resumed run's optimizer state before
    on_train_begin gives a TrainerMGPP its run length: the checkpoint's own
    run length is taken, and the resumed run ends as the uninterrupted one."""
    data = ToyDataset(n=48)

    def run(out, resume=None):
        model = tiny_bert()
        kwargs = dict(model=model, lr=1e-3, num_train_examples=len(data), target_sparsity=0.7,
                      initial_warmup_steps=2, final_finetune_steps=2, prune_interval=2, sigma1_sq=1.0)
        args = make_args(out, num_train_epochs=3, save_strategy="steps", save_steps=8)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                       optimizer_cls_and_kwargs=(TrainerMGPP, kwargs))
        add_mgpp_callback(trainer)
        trainer.train(resume_from_checkpoint=resume)
        return model, unwrap_optimizer(trainer.optimizer)

    full_model, full_opt = run(tmp_path / "full")
    resumed_model, resumed_opt = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-8"))
    assert full_opt.schedule.total_steps == 18, full_opt.schedule.total_steps
    assert resumed_opt.schedule.total_steps == 18, resumed_opt.schedule.total_steps
    assert resumed_opt.current_step == 18
    for (name, a), b in zip(full_model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), name


def test_trainer_mgpp_without_callback_refuses_to_step():
    model = tiny_bert()
    opt = TrainerMGPP(model, num_train_examples=10)
    model(input_ids=torch.ones(1, 4, dtype=torch.long), labels=torch.zeros(1, dtype=torch.long)).loss.backward()
    with pytest.raises(RuntimeError, match="total_steps"):
        opt.step()


def four_step_run(n):
    """(model, loader of n examples in batches of 4, MGPP over 4 optimizer
    steps with an event on each of steps 1 and 2, to 50%)."""
    model = tiny_bert()
    data = ToyDataset(n=n)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    opt = mgpp_ext.MGPP(mgpp_ext.prunable_param_groups(model), lr=1e-3, total_steps=4,
                        num_train_examples=len(data), target_sparsity=0.5,
                        initial_warmup_steps=1, final_finetune_steps=1, prune_interval=1,
                        sigma1_sq=1.0)
    return model, loader, opt


def test_accelerate_prepare_and_accumulation_do_not_advance_schedule():
    accelerate = pytest.importorskip("accelerate")
    model, loader, opt = four_step_run(n=32)
    acc = accelerate.Accelerator(gradient_accumulation_steps=2, cpu=True)
    model, opt_w, loader = acc.prepare(model, opt, loader)
    assert unwrap_optimizer(opt_w) is opt
    seen = []
    for batch in loader:  # 8 micro-batches -> 4 optimizer steps
        with acc.accumulate(model):
            acc.backward(model(**batch).loss)
            opt_w.step()
            opt_w.zero_grad()
        seen.append(opt.current_step)
    assert seen == [0, 1, 1, 2, 2, 3, 3, 4]
    assert_pruned_to(opt, 0.5)


def test_accelerate_loss_scale_overflow_never_reaches_mgpp():
    """With a loss scaler (fp16 training), accelerate's wrapper lets the
    scaler skip a step whose scaled gradients overflowed: MGPP's step is not
    called (it would raise on the inf, its default on_nonfinite="raise"), the
    wrapper reports the skip, and the weights stay as they were. What MGPP
    does itself with an inf gradient is tested in test_optimizer_api
    (test_grad_scaler, test_nonfinite_*). accelerate attaches a scaler only
    on a GPU, so a real torch GradScaler is given to it here; the overflow
    is an inf in one gradient, as an fp16 overflow leaves it."""
    accelerate = pytest.importorskip("accelerate")
    model, loader, opt = four_step_run(n=16)
    acc = accelerate.Accelerator(cpu=True)
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    model, opt_w, loader = acc.prepare(model, opt, loader)
    assert unwrap_optimizer(opt_w) is opt
    weight = next(p for p in model.parameters() if p.dim() == 2)
    seen, skipped = [], []
    for i, batch in enumerate(loader):  # 4 batches, the second one overflows
        acc.backward(model(**batch).loss)
        if i == 1:
            weight.grad.view(-1)[0] = float("inf")
            before = [p.detach().clone() for p in model.parameters()]
        opt_w.step()
        skipped.append(opt_w.step_was_skipped)
        if i == 1:
            assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
        opt_w.zero_grad()
        seen.append(opt.current_step)
    assert skipped == [False, True, False, False]
    assert seen == [1, 1, 2, 3]
    assert opt.schedule_state()["skipped_steps"] == 0  # MGPP never saw the inf


def test_mgpp_callback_is_first():
    model = tiny_bert()
    trainer = transformers.Trainer(model=model, args=transformers.TrainingArguments(
        output_dir="/tmp/unused", report_to=[], use_cpu=True))
    cb = add_mgpp_callback(trainer)
    assert trainer.callback_handler.callbacks[0] is cb
    assert isinstance(cb, MGPPCallback)


@pytest.mark.parametrize("make", ["srste", "fixed_mask", "admm"])
def test_callback_takes_methods_without_or_with_other_run_lengths(make, capsys):
    """SRSTE and FixedMask have no run length (their schedules keep one
    mask from the start); ADMM's is a one-shot schedule. The callback's
    start and its logs work for each."""
    from types import SimpleNamespace

    params = [torch.nn.Parameter(torch.randn(8, 8))]
    opt = {"srste": lambda: mgpp_ext.SRSTE(params, pattern="2:4"),
           "fixed_mask": lambda: mgpp_ext.FixedMask(params, [torch.rand(8, 8) > 0.5]),
           "admm": lambda: mgpp_ext.ADMM(params, total_steps=20, pattern="2:4", final_finetune_steps=5)}[make]()
    cb = MGPPCallback()
    cb.on_train_begin(None, SimpleNamespace(max_steps=10), None, optimizer=opt)
    logs = {}
    cb.on_log(None, SimpleNamespace(max_steps=10), None, logs=logs, optimizer=opt)
    assert "mgpp/sparsity" in logs
    assert ("total_steps=20" in capsys.readouterr().out) == (make == "admm")
