"""The A/B machinery: corpus, training loop fairness, result files, the CLI and the demo."""

from __future__ import annotations

import argparse
import cProfile
import importlib
import importlib.util
import json
import math
import os
import pstats

import pytest
import torch

from quartet_bench import cli, demo, report
from quartet_bench.arguments import variant_list
from quartet_bench.data import ByteCorpus, bits_per_byte
from quartet_bench.models import ModelSpec
from quartet_bench.training import RunResult, TrainSettings, train
from quartet_bench.variants import backend_for, parse_variants
from quartet_compile import Recipe

SMALL = TrainSettings(batch=4, seq_len=64, steps=6, warmup_steps=2, eval_every=3, eval_batches=2)
FAST = {"inner_backend": "aot_eager"}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    gen = torch.Generator().manual_seed(0)
    for i in range(40):
        words = torch.randint(0, 50, (400,), generator=gen).tolist()
        (root / f"f{i}.py").write_text(" ".join(f"w{w}" for w in words))
    (root / "skip.bin").write_bytes(b"\x00" * 100)
    return root


@pytest.fixture(scope="module")
def corpus(corpus_dir):
    return ByteCorpus.load(corpus_dir)


def test_corpus_split_is_by_file_and_stable(corpus_dir, corpus):
    again = ByteCorpus.load(corpus_dir)
    assert torch.equal(corpus.train, again.train) and torch.equal(corpus.val, again.val)
    total = sum(p.stat().st_size for p in corpus_dir.glob("*.py"))
    assert corpus.train.numel() + corpus.val.numel() == total
    assert 0 < corpus.val.numel() < corpus.train.numel()


def test_single_file_splits_by_position(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(bytes(range(256)) * 40)
    corpus = ByteCorpus.load(path)
    assert corpus.val.numel() == 256 * 40 // 20
    assert torch.equal(
        torch.cat([corpus.train, corpus.val]), torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    )


def test_bad_corpus_paths_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ByteCorpus.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="no text files"):
        ByteCorpus.load(tmp_path)


def test_installed_packages_are_read_only_as_the_root(tmp_path):
    """The standard library skips its site-packages; a site-packages root (a larger corpus for
    long runs) is read, with its own nested installs still skipped."""
    root = tmp_path / "site-packages"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("a" * 1_500_000)
    (root / "pkg" / "site-packages").mkdir()
    (root / "pkg" / "site-packages" / "b.py").write_text("b" * 500)
    corpus = ByteCorpus.load(root)
    assert corpus.train.numel() + corpus.val.numel() == 1_500_000
    args = argparse.ArgumentParser()
    cli.add_training_arguments(args, {"model": "tiny", "batch": 1, "seq_len": 8, "steps": 1, "eval_every": 1,
                                      "lr": 1e-3, "name": "x"})  # fmt: skip
    capped = cli.corpus_from(args.parse_args(["--data", str(root), "--data-mb", "1"]))
    assert capped.train.numel() + capped.val.numel() == 1 << 20


def test_default_corpus_is_the_standard_library():
    corpus = ByteCorpus.load(max_bytes=1 << 20)
    assert corpus.train.numel() + corpus.val.numel() == 1 << 20
    assert b"import" in bytes(corpus.train[:200_000].tolist())


def test_batches_replay_with_the_same_generator(corpus):
    a = corpus.batches(3, 16, torch.Generator().manual_seed(5))
    b = corpus.batches(3, 16, torch.Generator().manual_seed(5))
    first, second = next(a), next(b)
    assert first.shape == (3, 17) and first.dtype == torch.int64
    assert torch.equal(first, second) and not torch.equal(next(a), first)
    val = corpus.validation_batches(2, 16, 3)
    assert all(torch.equal(x, y) for x, y in zip(val, corpus.validation_batches(2, 16, 3), strict=True))


def test_bits_per_byte():
    assert bits_per_byte(math.log(256)) == pytest.approx(8.0)


def test_variants_get_the_same_init_and_data(corpus):
    runs = [
        train(v, ModelSpec("tiny"), corpus, SMALL, torch.device("cpu"), FAST) for v in parse_variants("eager,eager")
    ]
    assert runs[0].losses == runs[1].losses and len(runs[0].losses) == SMALL.steps
    assert all(math.isfinite(x) for x in runs[0].losses)
    assert runs[0].losses[-1] < runs[0].losses[0]
    assert [s for s, _ in runs[0].val_bpb] == [3, 6]


def test_quartet_variant_trains_close_to_eager_and_counts_graphs(corpus):
    eager, quartet = (
        train(v, ModelSpec("tiny"), corpus, SMALL, torch.device("cpu"), FAST) for v in parse_variants("eager,quartet2")
    )
    assert quartet.error is None and quartet.graphs >= 1 and quartet.recompiles == 0 and quartet.graph_breaks == 0
    assert quartet.losses != eager.losses
    assert abs(quartet.final_val_bpb - eager.final_val_bpb) < 0.05 * eager.final_val_bpb
    assert len(quartet.step_ms) == SMALL.steps - SMALL.warmup_steps and quartet.median_step_ms > 0


def test_missing_optional_variants_are_reported_not_raised(corpus):
    if importlib.util.find_spec("torch_tensorrt") is not None:
        pytest.skip("torch_tensorrt is installed")
    (trt,) = (train(v, ModelSpec("tiny"), corpus, SMALL, torch.device("cpu")) for v in parse_variants("tensorrt"))
    assert trt.error is not None and "torch_tensorrt" in trt.error and not trt.step_ms
    assert "tensorrt" not in cli._default_variants()
    with pytest.raises(ValueError, match="unknown variant"):
        parse_variants("inductor,fp3")


def test_transformers_model_from_config(corpus):
    pytest.importorskip("transformers")
    spec = ModelSpec(hf_config="gpt2", hf_overrides=(("n_layer", 1), ("n_embd", 128), ("n_head", 2)))
    (run,) = (train(v, spec, corpus, SMALL, torch.device("cpu"), FAST) for v in parse_variants("quartet2"))
    assert run.error is None and run.graphs >= 1 and all(math.isfinite(x) for x in run.losses)
    with pytest.raises(ValueError, match="vocab_size"):
        ModelSpec(hf_config="gpt2", hf_overrides=(("vocab_size", 100),)).build()


def _result(name: str, ms: float, bpb: float, memory: int | None = None) -> RunResult:
    return RunResult(name, "tiny", 10, losses=[3.0, 2.0], val_bpb=[(2, bpb)], step_ms=[ms, ms, 3 * ms],
                     peak_memory_bytes=memory, tokens_per_step=1000)  # fmt: skip


def test_summary_ratios_are_to_the_inductor_baseline():
    results = [_result("quartet2", 30.0, 2.2, 3 << 30), _result("inductor", 20.0, 2.0, 2 << 30)]
    results.append(RunResult("tensorrt", "tiny", 10, error="ModuleNotFoundError: torch_tensorrt"))
    header, rows = report.summary_rows(results)
    q = dict(zip(header, rows[0], strict=False))
    assert q["step ms"] == "30.0" and q["x base"] == "1.50" and q["bpb gap"] == "+10.00%"
    assert rows[0][header.index("peak GiB") + 1] == "1.50"
    assert q["tokens/s"] == f"{1000 / 0.030:,.0f}"
    assert rows[2][1] == "not run" and "torch_tensorrt" in report.failures(results)


def test_result_files_round_trip(tmp_path):
    pytest.importorskip("matplotlib")
    results = [_result("inductor", 20.0, 2.0), _result("quartet2", 25.0, 2.1)]
    paths = report.write(results, tmp_path, "ab", report.environment(torch.device("cpu")))
    assert sorted(p.suffix for p in paths) == [".json", ".md", ".png"]
    payload = json.loads((tmp_path / "ab.json").read_text())
    assert {"device", "versions", "host", "command"} <= set(payload) and payload["results"][1]["median_step_ms"] == 25.0
    assert payload["host"]["cpus"] >= 1 and payload["host"]["cpu"]
    assert "Host: " in (tmp_path / "ab.md").read_text()
    loaded, meta = report.load(tmp_path / "ab.json")
    assert loaded[1].val_bpb == [(2, 2.1)] and loaded[1].median_step_ms == 25.0 and meta["device"]
    assert (tmp_path / "ab.png").stat().st_size > 1000


def test_cli_writes_the_comparison(corpus_dir, tmp_path, capsys):
    status = cli.main(["--data", str(corpus_dir), "--variants", "eager,quartet2", "--steps", "4", "--batch", "2",
                       "--seq-len", "32", "--eval-every", "2", "--inner-backend", "aot_eager",
                       "--out", str(tmp_path)])  # fmt: skip
    assert status is None  # the console script exits with it: status 0, nothing printed
    out = capsys.readouterr().out
    assert "quartet2" in out and "Validation bits per byte" in out
    payload = json.loads((tmp_path / "ab.json").read_text())
    assert [r["variant"] for r in payload["results"]] == ["eager", "quartet2"]
    cli.main(["--replot", str(tmp_path / "ab.json")])
    assert "quartet2" in capsys.readouterr().out


def test_output_explains_its_columns_and_prints_the_total_time(corpus_dir, capsys):
    cli.main(["--data", str(corpus_dir), "--variants", "inductor,quartet2", "--steps", "3", "--batch", "2",
              "--seq-len", "32", "--eval-every", "3", "--inner-backend", "aot_eager"])  # fmt: skip
    captured = capsys.readouterr()
    for column in ("x base", "compile s", "peak GiB", "bpb gap", "recompiles"):
        assert column in captured.out
    assert all(line in captured.out for line in report.LEGEND)
    assert "measured on CUDA only" in captured.out and "compiles cold" in captured.out
    assert "Total time:" in captured.err


def test_a_failing_variant_is_a_not_run_row_and_the_comparison_goes_on(corpus_dir, capsys, monkeypatch):
    from quartet_bench import training

    real = training.backend_for

    def broken(variant, options):
        if variant.name == "quartet2-no46":
            raise RuntimeError("a kernel that does not compile here\nsecond line")
        return real(variant, options)

    monkeypatch.setattr(training, "backend_for", broken)
    results = cli.run(["--data", str(corpus_dir), "--variants", "eager,quartet2-no46,quartet2", "--steps", "2",
                        "--batch", "2", "--seq-len", "32", "--eval-every", "2",
                        "--inner-backend", "aot_eager"])  # fmt: skip
    out = capsys.readouterr().out
    assert [r.error is None for r in results] == [True, False, True]
    assert "quartet2-no46: not run: RuntimeError: a kernel that does not compile here" in out
    assert results[2].losses and results[2].step_ms


def test_a_model_that_cannot_be_built_is_reported_not_raised(corpus_dir, capsys):
    """The README's old example: GPT-2 with n_embd=512 and its default 12 heads."""
    pytest.importorskip("transformers")
    results = cli.run(["--data", str(corpus_dir), "--hf-config", "gpt2", "--hf-set", "n_layer=1", "--hf-set",
                        "n_embd=512", "--variants", "eager", "--steps", "2"])  # fmt: skip
    assert "must be divisible by num_heads" in results[0].error
    assert "not run" in capsys.readouterr().out


def test_cli_errors_list_what_is_allowed(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--variants", "inductor,fp8"])
    assert "unknown variant(s) ['fp8']; choose from eager, inductor, quartet2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(["--recipe", "fp8"])
    assert "invalid choice: 'fp8' (choose from quartet2, quartet2-no46, nvidia, fp4-forward, bf16)" in (
        capsys.readouterr().err.replace("'quartet2'", "quartet2").replace("'", "")
        .replace("fp8 (", "'fp8' (")
    )  # fmt: skip


def test_the_demo_takes_every_recipe_by_its_name(corpus_dir, capsys):
    demo.main(["--data", str(corpus_dir), "--recipe", "bf16", "--steps", "2", "--batch", "2", "--seq-len", "32",
               "--eval-every", "2", "--inner-backend", "aot_eager"])  # fmt: skip
    assert "bf16 reaches" in capsys.readouterr().out


def test_help_shows_defaults_and_choices_in_plain_text(capsys):
    for main in (demo.main, cli.main):
        with pytest.raises(SystemExit):
            main(["--help"])
        text = capsys.readouterr().out
        assert "(default: " in text and "``" not in text
    with pytest.raises(SystemExit):
        demo.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{quartet2,quartet2-no46,nvidia,fp4-forward,bf16}" in text
    assert (
        f"(default: {demo.CPU_DEFAULTS['steps'] if not torch.cuda.is_available() else demo.GPU_DEFAULTS['steps']})"
        in text
    )


def test_torch_logs_switches_the_backend_log_on(tmp_path):
    """The documented switch, in a fresh interpreter (TORCH_LOGS is read when torch is imported)."""
    import os
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from quartet_bench.models import Llama\n"
        "model = torch.compile(Llama(), backend='quartet', options={'inner_backend': 'eager'})\n"
        "model(torch.randint(0, 256, (2, 64)))\n"
    )
    for setting, expected in (("quartet_compile", "quantized 14 of 15"), ("+quartet_compile", "layers.0.attn.q_proj")):
        env = {**os.environ, "TORCH_LOGS": setting, "OMP_NUM_THREADS": "1"}
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and expected in result.stderr, result.stderr[-2000:]


def test_cli_rejects_bad_hf_overrides():
    with pytest.raises(SystemExit):
        cli.main(["--hf-config", "gpt2", "--hf-set", "n_layer"])


def test_demo_is_the_ab_training_job(corpus_dir, capsys):
    demo.main(["--data", str(corpus_dir), "--steps", "4", "--batch", "2", "--seq-len", "32", "--eval-every", "2"])
    out = capsys.readouterr().out
    assert "inductor" in out and "quartet2" in out and "bits/byte vs" in out


def test_compile_mode_reaches_the_backends(corpus, monkeypatch):
    from quartet_bench import variants

    seen = []

    class Spy(variants.QuartetBackend):
        def __call__(self, gm, example_inputs, mode=None):
            seen.append(mode)
            return super().__call__(gm, example_inputs, mode=mode)

    monkeypatch.setattr(variants, "QuartetBackend", Spy)
    settings = TrainSettings(batch=2, seq_len=32, steps=3, warmup_steps=1, eval_every=3, eval_batches=1,
                             compile_mode="reduce-overhead")  # fmt: skip
    (run,) = (
        train(v, ModelSpec("tiny"), corpus, settings, torch.device("cpu"), FAST) for v in parse_variants("quartet2")
    )
    assert run.error is None and len(run.losses) == 3 and seen and set(seen) == {"reduce-overhead"}


def test_graph_breaks_are_counted_per_variant(corpus):
    torch._dynamo.utils.counters["graph_break"]["left over from an earlier compile"] += 3
    (run,) = (train(v, ModelSpec("tiny"), corpus, SMALL, torch.device("cpu"), FAST) for v in parse_variants("quartet2"))
    assert run.graph_breaks == 0


def test_cli_repeats_every_variant_per_backward_seed(corpus_dir, tmp_path, capsys):
    cli.main(["--data", str(corpus_dir), "--variants", "eager,quartet2", "--steps", "3", "--batch", "2",
              "--seq-len", "32", "--eval-every", "3", "--inner-backend", "aot_eager", "--backward-seed", "4,5",
              "--out", str(tmp_path)])  # fmt: skip
    loaded, _ = report.load(tmp_path / "ab.json")
    assert [r.label for r in loaded] == ["eager seed 4", "eager seed 5", "quartet2 seed 4", "quartet2 seed 5"]
    assert "quartet2 seed 5" in capsys.readouterr().out
    eager, quartet = loaded[:2], loaded[2:]
    assert eager[0].losses == eager[1].losses, "the backward seed changed a deterministic run"
    assert quartet[0].losses[0] == quartet[1].losses[0], "the first forward does not depend on the backward seed"
    assert quartet[0].losses[1:] != quartet[1].losses[1:], "the stochastic backward ignored its seed"


def test_cli_rejects_bad_seed_lists():
    with pytest.raises(SystemExit):
        cli.main(["--backward-seed", "1,x"])


def _bench_script(name: str):
    """The study ``quartet_bench.studies.{name}``."""
    return importlib.import_module(f"quartet_bench.studies.{name}")


def test_accuracy_merges_runs_of_several_processes(tmp_path):
    pytest.importorskip("matplotlib")
    accuracy = _bench_script("accuracy")
    meta = {**report.environment(torch.device("cpu")), "model": "tiny", "settings": {"steps": 2}}
    report.write([_result("inductor", 20.0, 2.0)], tmp_path, "a-tiny", {**meta, "command": "first"})
    second = {**meta, "command": "second", "settings": {"steps": 2, "backward_seed": 2}}
    report.write([_result("quartet2", 25.0, 2.1)], tmp_path, "b-tiny", second)
    accuracy.summarize([tmp_path / "a-tiny.json", tmp_path / "b-tiny.json"], tmp_path, "ab")
    merged, merged_meta = report.load(tmp_path / "ab-tiny.json")
    assert [r.variant for r in merged] == ["inductor", "quartet2"]
    assert merged_meta["settings"] == {"steps": 2}, "a merged file claimed one backward seed for all its runs"
    assert merged_meta["command"] == "first ; second" and "+5.00% vs BF16" in merged_meta["notes"][1]
    third = {**meta, "command": "third", "settings": {"steps": 2, "backward_seed": 3}}
    report.write([_result("quartet2", 25.0, 2.3)], tmp_path, "e-tiny", third)
    accuracy.summarize([tmp_path / "ab-tiny.json", tmp_path / "e-tiny.json"], tmp_path, "abe")
    again, again_meta = report.load(tmp_path / "abe-tiny.json")
    assert [r.variant for r in again] == ["inductor", "quartet2", "quartet2"]
    assert again_meta["merged_from"] == ["a-tiny.json", "b-tiny.json", "e-tiny.json"]
    assert again_meta["command"] == "first ; second ; third" and "over 2 seed(s)" in again_meta["notes"][1]
    report.write([_result("nvidia", 25.0, 2.1)], tmp_path, "c-tiny", {**meta, "settings": {"steps": 3}})
    with pytest.raises(SystemExit, match="settings"):
        accuracy.summarize([tmp_path / "a-tiny.json", tmp_path / "c-tiny.json"], tmp_path, "ac")
    report.write([_result("nvidia", 25.0, 2.1)], tmp_path, "d-tiny", {**meta, "corpus": {"source": "elsewhere"}})
    with pytest.raises(SystemExit, match="corpus"):
        accuracy.summarize([tmp_path / "a-tiny.json", tmp_path / "d-tiny.json"], tmp_path, "ad")
    with pytest.raises(SystemExit, match="--out"):
        accuracy.summarize([tmp_path / "a-tiny.json", tmp_path / "b-tiny.json"], None, "ab")


def test_accuracy_errors_use_the_pooled_run_to_run_spread():
    accuracy = _bench_script("accuracy")
    runs = [("inductor", 1.0), ("inductor", 1.2), ("quartet2", 1.1), ("quartet2", 1.3), ("nvidia", 1.4)]
    notes = accuracy.seed_summary([_result(name, 20.0, bpb) for name, bpb in runs])
    assert "nvidia: val bpb 1.4000 over 1 seed(s), +27.27% vs BF16" in notes
    assert "run-to-run sd, pooled over recipes: 0.1414 (2 degrees of freedom)" in notes
    assert "inductor < quartet2: holds (1.1000 vs 1.2000, +0.7 standard errors)" in notes
    assert "quartet2 < nvidia: holds (1.2000 vs 1.4000, +1.2 standard errors)" in notes
    single = accuracy.seed_summary([_result("quartet2", 20.0, 1.3), _result("nvidia", 20.0, 1.2)])
    assert single[-1] == "quartet2 < nvidia: does NOT hold (1.3000 vs 1.2000, no repeats: no error)"


def test_validation_gap_curves_are_against_the_mean_baseline():
    runs = [RunResult("inductor", "tiny", 1, val_bpb=[(1, 2.0), (2, 1.0)]),
            RunResult("inductor", "tiny", 1, val_bpb=[(1, 2.2), (2, 1.2)]),
            RunResult("quartet2", "tiny", 1, val_bpb=[(1, 2.31), (2, 1.21), (3, 1.0)])]  # fmt: skip
    gaps = report._val_gap_curves(runs)
    assert list(gaps) == ["quartet2"] and [step for step, _ in gaps["quartet2"]] == [1, 2]
    assert gaps["quartet2"][0][1] == pytest.approx(10.0) and gaps["quartet2"][1][1] == pytest.approx(10.0)
    assert report._val_gap_curves(runs[2:]) == {}


def test_step_profile_groups_kernels_by_family(tmp_path):
    profile = _bench_script("step_profile")
    names = ["nvjet_sm90_tst_256x128", "_tma_gemm_kernel", "_ms_eden_kernel", "_stats_kernel",
             "cudnn_generated_fort_native_sdpa_sm90_flash_bprop", "multi_tensor_apply_kernel",
             "triton_poi_fused_mul_0"]  # fmt: skip
    assert [profile.family(n) for n in names] == ["gemm", "gemm", "quantizers", "quantizers", "attention",
                                                   "optimizer", "other"]  # fmt: skip
    events = [("_ms_eden_kernel", 300.0), ("_ms_eden_kernel", 100.0), ("nvjet_x", 1000.0), ("triton_poi_a", 50.0)]
    result = profile.breakdown(events, steps=2)
    assert result["families_ms"] == {"gemm": 0.5, "quantizers": 0.2, "attention": 0.0, "optimizer": 0.0,
                                     "other": 0.025}  # fmt: skip
    assert result["kernel_ms"] == pytest.approx(0.725) and result["launches"] == 2.0
    assert [t["kernel"] for t in result["top"]] == ["nvjet_x", "_ms_eden_kernel", "triton_poi_a"]
    assert result["top"][1]["launches"] == 1.0
    profile.main(["--model", "tiny", "--batch", "2", "--seq-len", "16", "--variants", "eager,bf16", "--steps",
                  "1", "--warmup", "1", "--device", "cpu", "--out", str(tmp_path)])  # fmt: skip
    base, op_layer = json.loads((tmp_path / "step-profile.json").read_text())["rows"]
    assert 0 < base["host_ms"] <= base["step_ms"] and base["x_step"] == 1.0
    assert math.isnan(base["device_mallocs"])  # no CUDA allocator on the CPU
    assert base["quartet_linears"] == 0 and "host_us_per_linear" not in base
    assert op_layer["quartet_linears"] == 14  # q, k, v, o, gate, up, down of the tiny preset's two blocks
    assert op_layer["x_step"] == pytest.approx(op_layer["step_ms"] / base["step_ms"])
    excess = op_layer["host_ms"] - base["host_ms"]
    assert op_layer["host_us_per_linear"] == pytest.approx(1e3 * excess / 14)
    with pytest.raises(SystemExit, match="covers"):
        profile.main(["--model", "tiny", "--variants", "fouroversix", "--device", "cpu"])


def test_step_profile_times_every_step_before_profiling_any():
    """The profiler leaves CUPTI behind, which slows later launches: a step timed after another's
    profile would pay for it. A step that compiles while profiled is an error."""
    profile = _bench_script("step_profile")
    calls = []
    steps = [(name, lambda name=name: calls.append(name)) for name in ("base", "variant")]
    measured = profile.measure_all(iter(steps), torch.device("cpu"), warmup=2, steps=3)
    assert [name for name, _ in measured] == ["base", "variant"]
    assert calls == ["base"] * 5 + ["variant"] * 5 + ["base"] * 4 + ["variant"] * 4
    assert all(row["step_ms"] > 0 and "kernel_ms" in row for _, row in measured)
    double = torch.compile(lambda x: x * 2, backend="eager")

    def recompiling() -> None:
        torch._dynamo.reset()
        double(torch.ones(2))

    with pytest.raises(RuntimeError, match="compiled again"):
        profile.measure_all(iter([("recompiling", recompiling)]), torch.device("cpu"), warmup=1, steps=1)


def test_compile_time_runs_each_variant_in_a_process_with_empty_caches(tmp_path):
    """Caches fill across variants, so each first step is a user's only in a fresh process with
    caches of its own; a second process over those caches gives a later run's first step."""
    study = _bench_script("compile_time")
    study.main(["--model", "tiny", "--batch", "2", "--seq-len", "16", "--device", "cpu", "--variants", "eager,bf16",
                "--inner-backend", "aot_eager", "--out", str(tmp_path)])  # fmt: skip
    eager, bf16 = json.loads((tmp_path / "compile-time.json").read_text())["rows"]
    assert (eager["variant"], bf16["variant"]) == ("eager", "bf16")
    assert eager["quartet_linears"] == 0 and bf16["quartet_linears"] == 14
    assert all(0 < r["second_step_s"] < r["first_step_s"] for r in (eager, bf16))
    assert all(r["warm_first_step_s"] > 0 for r in (eager, bf16)) and bf16["warm_phases"]
    assert bf16["warm_caches"] == {}  # aot_eager caches nothing; Inductor's lookups read as below
    hits = {"inductor.fxgraph_cache_hit": 2, "aot_autograd.autograd_cache_bypass": 1, "inductor.other": 3}
    assert study._hits(hits) == "aot 1 bypass, fx 2 hit" and study._hits({}) == "-"
    assert not eager["phases"] and bf16["phases"][0]["s"] >= bf16["phases"][-1]["s"] > 0
    dirs = eager["cache_dirs"] + bf16["cache_dirs"]
    assert len(set(dirs)) == 4 and os.environ.get("TORCHINDUCTOR_CACHE_DIR") not in dirs
    assert "| bf16 |" in (tmp_path / "compile-time.md").read_text()


def test_gemm_routes_cover_every_linear_and_its_gradients(monkeypatch):
    """Three GEMMs per distinct linear; the weight gradient reduces over the tokens into a
    float32 [N, K] output; the table shows what ships and its ratio to bf16."""
    routes = _bench_script("gemm_routes")
    shapes = routes.linear_shapes("30m", 1024)
    assert len(shapes) == 12
    by_gemm = {(layer, name): (m, n, k, dtype) for layer, name, m, n, k, dtype in shapes}
    assert by_gemm[("mlp up, gate", "forward")] == (1024, 1536, 512, torch.bfloat16)
    assert by_gemm[("mlp up, gate", "input grad")] == (1024, 512, 1536, torch.bfloat16)
    assert by_gemm[("mlp up, gate", "weight grad")] == (1536, 512, 1024, torch.float32)
    row = {"model": "30m", "layer": "lm head", "gemm": "weight grad", "M": 256, "N": 512, "K": 1024,
           "bf16_us": 10.0, "tma_us": 40.0, "load_us": 42.0, "cublas_route_us": 12.0, "shipped": "cublas_route",
           "shipped_us": 12.5}  # fmt: skip
    meta = {"device": "H100", "versions": {}, "command": "x", "tma_min_wave": 0.75, "sms": 132, "tile": "128x256"}
    text = routes.markdown([row], meta)
    cells = "| 30m | lm head | weight grad | 256 | 512 | 1024 | 10.0 | 40.0 | 42.0 | 12.0 | cublas_route | 12.5 | 1.25"
    assert cells in text


def test_write_result_writes_the_json_and_markdown_pair(tmp_path):
    out = tmp_path / "new" / "dir"
    json_path, md_path = report.write_result(out, "x-30m", {"device": "cpu", "rows": [{"a": 1.5}]}, "# x\n")
    assert (json_path, md_path) == (out / "x-30m.json", out / "x-30m.md")
    assert json.loads(json_path.read_text()) == {"device": "cpu", "rows": [{"a": 1.5}]}
    assert md_path.read_text() == "# x\n"


def test_eval_step_measures_the_inference_path_against_the_training_forward(tmp_path):
    from quartet_compile.ops import clear_weight_cache, weight_cache_info

    clear_weight_cache()
    _bench_script("eval_step").main(["--model", "tiny", "--batch", "2", "--seq-len", "16", "--steps", "1",
                                     "--warmup", "1", "--device", "cpu", "--out", str(tmp_path)])  # fmt: skip
    rows = json.loads((tmp_path / "eval-step.json").read_text())["rows"]
    assert [r["case"] for r in rows] == list(_bench_script("eval_step").CASES)
    assert rows[0]["x"] == 1.0 and all(0 < r["host_ms"] <= r["step_ms"] for r in rows)
    hits, misses, _ = weight_cache_info()
    assert misses == 14 and hits >= 14  # the cached case quantized each of the 14 weights once
    assert "weights cached" in (tmp_path / "eval-step.md").read_text()


def test_inductor_setting_compiles_each_arm_under_its_setting(tmp_path, monkeypatch):
    """The setting must span the arm's first steps, where the forward and the backward compile, and
    reach where the kernels compile."""
    import torch._inductor.compile_fx as compile_fx

    seen, threads = [], []
    original = compile_fx._compile_fx_inner

    def recording(gm, example_inputs, **kwargs):
        seen.append((kwargs.get("is_backward"), torch._inductor.config.fallback_random))
        threads.append(torch._inductor.config.compile_threads)
        return original(gm, example_inputs, **kwargs)

    monkeypatch.setattr(compile_fx, "_compile_fx_inner", recording)
    # A cache hit compiles nothing; workers would compile the kernels. (monkeypatch's undo would
    # delete these config entries.)
    no_cache = torch._functorch.config.patch(enable_autograd_cache=False)
    with torch._inductor.config.patch(fx_graph_cache=False, compile_threads=4), no_cache:
        _bench_script("inductor_setting").main(["--setting", "fallback_random=True", "--model", "tiny", "--batch", "2",
                                                "--seq-len", "16", "--rounds", "1", "--steps", "1", "--warmup", "1",
                                                "--device", "cpu", "--out", str(tmp_path)])  # fmt: skip
    assert seen == [(False, False), (True, False), (False, True), (True, True)]
    assert threads == [1] * 4, "kernels compile in this process, where the setting is patched"
    result = json.loads((tmp_path / "inductor-setting.json").read_text())
    assert [r["arm"] for r in result["rows"]] == ["default", "set"]
    assert (result["setting"], result["value"], result["default"]) == ("fallback_random", True, False)
    assert "fallback_random" in (tmp_path / "inductor-setting.md").read_text()


def test_a_variant_switches_backend_options_on_after_a_plus():
    names = ["inductor", "quartet2", "quartet2+fuse_projections"]
    assert variant_list(",".join(names)) == names
    fused = parse_variants("quartet2+fuse_projections")[0]
    assert (fused.name, fused.recipe, fused.options) == (names[2], Recipe.QUARTET2, ("fuse_projections",))
    assert backend_for(fused, {}).inner.config.fuse_projections
    assert not backend_for(parse_variants("quartet2")[0], {}).inner.config.fuse_projections
    python_wrapper = parse_variants("quartet2+cpp_wrapper=false")[0]
    assert backend_for(python_wrapper, {}).inner.config.cpp_wrapper is False
    assert backend_for(parse_variants("inductor+cpp_wrapper")[0], {}).inner.keywords == {"cpp_wrapper": True}
    for bad in ("inductor+fuse_projections", "quartet2+min_features", "quartet2+nope", "quartet2+cpp_wrapper=0",
                "nope", ""):  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError):
            variant_list(bad)


@pytest.mark.gpu
def test_launch_queue_times_issue_and_completion(tmp_path):
    _bench_script("launch_queue").main(["--launches", "8,64", "--kernel-us", "20", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "launch-queue.json").read_text())["rows"]
    assert [r["launches"] for r in rows] == [8, 64]
    assert all(0 < r["host_ms"] <= r["device_ms"] for r in rows)
    assert rows[1]["device_ms"] >= 64 * 0.02 * 0.5  # the sleeps ran for about their calibrated time


def test_ms_eden_tiles_counts_programs_per_sm_and_sums_the_model():
    """Registers are allocated per warp in units of 256: 128 registers leave two programs of 8
    warps per H100 SM, 129 one; shared memory and threads bound the rest. Model totals weight
    every linear's launches by how many such linears a layer has, per launch structure and
    configuration measured."""
    study = _bench_script("ms_eden_tiles")
    assert [study.programs_per_sm(r, 49152, 8) for r in (64, 100, 128, 129, 168)] == [4, 2, 2, 1, 1]
    assert study.programs_per_sm(32, 100_000, 4) == 2 and study.programs_per_sm(16, 0, 8) == 8
    assert study._linears("1024x256:2,2816x1024:1") == {(1024, 256): 2, (2816, 1024): 1}
    together, separate = list(study.LAUNCHES)[0], list(study.LAUNCHES)[-1]
    label = study._config_cell(study.CANDIDATES[0])
    rows = [{"config": label, "launches": together, "per_layer": n, "amax_us": 10.0 * n, "quantize_us": 30.0}
            for n in (1, 2)]  # fmt: skip
    rows.append({"config": "shipped", "launches": separate, "per_layer": 1, "amax_us": 5.0, "quantize_us": 1.0})
    totals = study._totals(rows, layers=8)
    assert [(t["launches"], t["config"]) for t in totals] == [(together, label), (separate, "shipped")]
    assert totals[0]["amax_ms"] == pytest.approx(8 * (10 + 2 * 20) / 1e3)
    assert totals[0]["quantize_ms"] == pytest.approx(8 * 3 * 30 / 1e3)
    assert totals[1]["amax_ms"] == pytest.approx(8 * 5 / 1e3)
    assert "quantize 64 rows" in study._shipped_cell()
    assert study._shipped_launches() == "one launch per pass"
    cfg = {"BLOCK_R": 64, "MAX_TILES": 4, "PROGRAMS_PER_SM": 3}
    assert study._tiles([(8192, 22)], cfg, 132) == 4 and study._tiles([(8192, 22, 128)], cfg, 132) == 2


def test_kernel_resources_compiles_the_passes_as_launches_specialize_them():
    """The study compiles what a launch compiles: the dense slot's unit stride and the rotation's
    row stride are constants, pointers and shapes are marked divisible by 16 except the seed (a
    view at an 8-byte offset); then it reads registers, spills and shared memory from the cubin
    and turns them into programs per Hopper SM."""
    triton = pytest.importorskip("triton")
    study = _bench_script("kernel_resources")
    kernel, signature, constexprs = study.ms_eden_launch(study.GRADIENT, study.SAVED, tiles=2)
    specialized, constants, aligned = study._specialized(signature, constexprs, ("a_stride_c",))
    assert constants["a_stride_c"] == 1 and constants["stride_rot_k"] == 1 and constants["TILES"] == 2
    assert "a_stride_c" not in specialized and "b_stride_c" in specialized and "a_stride_r" in aligned
    assert "a_src_ptr" in aligned and "b_src_scales_ptr" in aligned and "a_end" not in aligned
    assert not [name for name in aligned if "seed" in name] and "value_max" not in aligned
    _, signature, constexprs = study.quantize_launch(True, FOUR_OVER_SIX=False, TILE_2D=False, BLOCK_R=8, BLOCK_C=256)
    specialized, constants, _ = study._specialized(signature, constexprs, ("a_stride_c", "b_stride_c"))
    assert constants["a_stride_c"] == constants["b_stride_c"] == 1 and "stride_rot_k" not in constants
    if not study.CUOBJDUMP.exists():
        pytest.skip("Triton's bundled cuobjdump is not installed")
    operands = {"g (dgrad)": study.MS_EDEN_OPERANDS["g (dgrad)"]}
    twin = {"g and g^T from one read": study.MS_EDEN_TWIN_OPERANDS["g and g^T from one read"]}
    rows = study.measure(90, tiles=(1,), operands=operands, twin_operands=twin)
    assert [r["kernel"] for r in rows] == [
        "MS-EDEN amax: g (dgrad), 1 tile",
        "MS-EDEN amax: g and g^T from one read, 1 tile",
        "MS-EDEN quantize: g (dgrad), 1 tile",
        "forward quantize RTN: x + W",
        "forward quantize 4/6: x + W",
    ]
    for row, warps in zip(rows, (8, 8, 8, 4, 4), strict=True):
        assert 32 <= row["registers"] <= 255 and row["spilled_bytes"] == 0 and row["instructions"] > 200, row
        assert row["programs_per_sm"] == study.programs_per_sm(row["registers"], row["shared_bytes"], warps)
    assert rows[2]["shared_bytes"] >= 128 * 128 * 2  # the rotation sits in shared memory
    assert rows[1]["shared_bytes"] >= 2 * 128 * 128 * 2  # and the 128-row tile read for both axes
    meta = {"device": "none", "versions": {}, "command": "c", "arch": 90, "triton": triton.__version__}
    assert "| MS-EDEN quantize: g (dgrad), 1 tile |" in study._markdown(rows, meta)


def test_host_profile_sums_exclusive_time_by_machinery_and_counts_calls(tmp_path):
    """Each function's own time goes to the first bucket its ``file:function`` matches; launches,
    allocations and views are counted per step; a quartet variant's excess is per linear."""
    study = _bench_script("host_profile")
    profiler = cProfile.Profile()
    profiler.runcall(len, ())
    stats = pstats.Stats(profiler)
    stats.stats = {
        ("/torch/_inductor/runtime/triton_heuristics.py", 1, "run"): (20, 20, 0.020, 0.05, {}),
        ("~", 0, "<built-in method torch._C._dynamo.guards._empty_strided_cuda>"): (10, 10, 0.010, 0.010, {}),
        ("~", 0, "<built-in method torch._C._dynamo.guards._reinterpret_tensor>"): (30, 30, 0.003, 0.003, {}),
        ("/tmp/torchinductor_root/ab/cab.py", 9, "call"): (1, 1, 0.005, 0.1, {}),
        ("/torch/autograd/graph.py", 1, "backward"): (3, 3, 0.100, 0.2, {}),
    }
    result = study.breakdown(stats, steps=2, top=2)
    assert result["buckets_ms"] == pytest.approx({"launch": 10, "allocation": 5, "view": 1.5, "graph code": 2.5,
                                                  "other": 50})  # fmt: skip
    assert result["counts"] == {"launches": 10, "allocations": 5, "views": 15}
    assert result["profiled_ms"] == pytest.approx(69) and [t["ms"] for t in result["top"]] == pytest.approx([50, 10])
    study.main(["--model", "tiny", "--batch", "2", "--seq-len", "16", "--variants", "eager,bf16", "--steps", "1",
                "--warmup", "1", "--device", "cpu", "--out", str(tmp_path)])  # fmt: skip
    base, op_layer = json.loads((tmp_path / "host-profile.json").read_text())["rows"]
    assert base["quartet_linears"] == 0 and op_layer["quartet_linears"] == 14
    assert 0 < base["profiled_ms"] and sum(op_layer["buckets_ms"].values()) == pytest.approx(op_layer["profiled_ms"])
    excess = study.per_linear(op_layer, base)
    assert excess["allocations"] == pytest.approx(
        (op_layer["counts"]["allocations"] - base["counts"]["allocations"]) / 14
    )
    meta = {"model": "tiny", "batch": 2, "seq_len": 16}

    def row_of(rows: list[dict]) -> str:
        return next(line for line in study.markdown(rows, meta).splitlines() if line.startswith("| bf16 |"))

    assert "| 14 | " in row_of([base, op_layer]) and row_of([base, op_layer]).endswith(
        f"launches {excess['launches']:.1f}, allocations {excess['allocations']:.1f}, views {excess['views']:.1f} |"
    )
    assert row_of([op_layer]).endswith("| 14 | - |"), "a variant profiled alone has no baseline to exceed"
