"""The headless command line: the same engines as the UI, printing JSON (no gradio here)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.exc import SQLAlchemyError

from engines.attention.function import AttentionCapture, attention_path
from engines.attention.views import context_profile, layer_labels, question_positions, stacked
from engines.config.errors import LabError
from engines.config.kinds import FAMILIES, catalogue, entries
from engines.config.paths import ASSETS
from engines.config.policy import limits
from engines.config.specs import (
    DTYPES,
    KNOB_LIMIT,
    QUANT_4BIT_TYPES,
    QUANTS,
    DecodingSpec,
    MaskSpec,
    ModelSpec,
    RopeSpec,
    RunConfig,
    SpecError,
    TransformSpec,
)
from engines.decoding.generation import encode, format_prompt
from engines.model.loading import MANAGER, console_progress, resolve_source
from engines.probes.benchmarks import UNAVAILABLE
from engines.probes.haystack import read_upload
from engines.probes.runner import SCORE_MODES, check_prompt_length, max_prompt_tokens, run_free, run_probe
from engines.probes.tasks import ProbeSpec, build_probe, get_task, load_tasks
from engines.studies.benchmark import benchmark_table, table_csv
from engines.studies.conflicts import conflict_summary, knob_curve, run_conflicts
from engines.studies.knob import find_knob
from engines.studies.sift import benchmark_summary, query_of, run_benchmark, run_sift
from engines.studies.sweeps import SweepSpec
from services.cluster import RayWorkers
from services.gallery import card_named, cards, result_sentence, run_card, stored_record
from services.replay import replay
from services.run_log import log_generation, log_probe, remember_upload, write_run
from services.sweep_jobs import benchmark_jobs, estimate, open_job, parse_list, run_job, sweep_summary
from storage.db import StorageError, Store, logging_enabled
from storage.transfer import export_session, import_session


class LabArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line on stderr and exits with code 2."""

    def error(self, message: str):
        raise SystemExit(_fail(f"{self.prog}: {message}"))


def first_use_progress(fraction: float, message: str) -> None:
    """Console progress for the slow first-use steps (download, conversion) only."""
    if fraction < 0.9:
        console_progress(fraction, message)


def _fail(message: str) -> int:
    """Print one line on stderr (control characters from the user's input shown escaped); exit code 2."""
    line = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)
    print(f"error: {line}", file=sys.stderr)
    return 2


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=ModelSpec.model,
                        help="the embedded id (default), a Hub id owner/name, or a local directory")
    parser.add_argument("--quant", choices=QUANTS, default="none", help="bitsandbytes quantization")
    parser.add_argument("--quant-4bit-type", choices=QUANT_4BIT_TYPES, default="nf4")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="auto = bf16 on CPUs with AMX/AVX512-BF16 (and on GPUs), else fp32")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--no-chat-template", action="store_true", help="feed the raw text")
    parser.add_argument("--max-new-tokens", type=int, help="default: 32, or the task preset's budget")
    parser.add_argument("--rope", default="default", help="RoPE scaling KIND[:factor[,key=value...]], e.g. yarn:2 "
                        f"(kinds: {', '.join(entries('rope'))}; python app.py kinds describes them)")
    parser.add_argument("--mask", default="causal", help="attention mask KIND[:key=value,...], e.g. "
                        f"sinks:n_sink=4,window=1024 (kinds: {', '.join(entries('mask'))})")
    parser.add_argument("--transform", default="none", help="context transform KIND[:key=value,...], e.g. jrt or "
                        f"jrt:times=3 (kinds: {', '.join(entries('transform'))})")
    parser.add_argument("--knob", type=float, action="append", default=None,
                        help="the context-sensitivity knob: this many times the model's context direction added "
                        f"at its layer (-{KNOB_LIMIT} to {KNOB_LIMIT}; + follows the context more, - less; found once "
                        "per model); repeat on decode --conflicts to compare values")
    parser.add_argument("--session", help="log into this session id (default: a new session)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_method_flag(parser: argparse.ArgumentParser, repeatable: bool = False) -> None:
    parser.add_argument("--method", action="append" if repeatable else "store", default=None,
                        help="decoding METHOD[:key=value,...], e.g. beam:num_beams=4 (methods: "
                        f"{', '.join(entries('decoding'))})" + ("; repeat to compare methods" if repeatable else ""))


def config_from_args(args: argparse.Namespace, default_new_tokens: int) -> RunConfig:
    spec = ModelSpec(model=args.model, quant=args.quant, quant_4bit_type=args.quant_4bit_type,
                     dtype=args.dtype, device=args.device)
    new_tokens = default_new_tokens if args.max_new_tokens is None else args.max_new_tokens
    method = args.method[0] if isinstance(args.method, list) else args.method
    knobs = args.knob or [0.0]
    if len(knobs) > 1 and not getattr(args, "conflicts", False):
        raise SpecError("--knob takes one value here; repeat it only on decode --conflicts, to compare values.")
    return RunConfig(model=spec, chat_template=not args.no_chat_template, max_new_tokens=new_tokens,
                     rope=RopeSpec.parse(args.rope), mask=MaskSpec.parse(args.mask),
                     decoding=DecodingSpec.parse(method or "greedy"), transform=TransformSpec.parse(args.transform),
                     knob=knobs[0])


def _store() -> Store:
    return Store()


def kept_if_unsaved(write: Callable[[], str | None]) -> str | None:
    """Write a finished run; if the log cannot take it, say so on stderr and keep the result."""
    try:
        return write()
    except StorageError as exc:
        print(f"warning: {exc}", file=sys.stderr)
        return None


def _run_log(args: argparse.Namespace) -> tuple[Store | None, str]:
    """Where a run is logged: the store and session (--session or a new "CLI" one), or nothing when
    logging is off (CONTEXT_LAB_LOGGING=0): then no file is created or written."""
    if not logging_enabled():
        return None, ""
    try:
        store = Store()
        return store, args.session or store.new_session("CLI")
    except (StorageError, SQLAlchemyError) as exc:
        print(f"warning: the run will not be logged: {exc}", file=sys.stderr)
        return None, ""


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """key=value pairs; values that read as JSON (numbers, true, lists) are taken as such."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--param '{pair}' is not key=value; write e.g. --param num_hops=3.")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def cmd_probe(args: argparse.Namespace) -> dict[str, Any]:
    if args.task:
        return probe_task(args)
    if args.question is None or not args.question.strip():
        raise SpecError("--question is empty: give the question to ask about the context (or use --task).")
    config = config_from_args(args, default_new_tokens=32)
    loaded = MANAGER.get(config.model, first_use_progress)
    prompt = format_prompt(loaded.tokenizer, args.context, args.question, config.chat_template,
                           transform=config.transform)
    plain = format_prompt(loaded.tokenizer, "", args.question, config.chat_template)
    check_prompt_length(loaded, prompt)
    capture = capture_for(args, loaded, prompt, args.question)
    *_, result = run_free(loaded, prompt, config, plain_prompt=plain, capture=capture)
    store, session_id = _run_log(args)
    run_id = kept_if_unsaved(lambda: log_generation(store, session_id, "probe", config, loaded,
                                                    {"context": args.context, "question": args.question}, result))
    return captured(capture, loaded, prompt) | {"answer": result.text, "prompt": prompt, "prompt_tokens": result.prompt_tokens,
            "new_tokens": result.new_tokens, "model": config.model.model, "dtype": loaded.dtype_name,
            "quant": config.model.quant, "device": loaded.device, "attention_path": attention_path(loaded.device),
            "seconds": result.seconds,
            "time_to_first_token": result.ttft, "tokens_per_second": result.tokens_per_second,
            "finish": result.finish, "run_id": run_id, "transform": config.transform.label}


def capture_for(args: argparse.Namespace, loaded, prompt: str, question: str) -> AttentionCapture | None:
    """With --capture: the question's rows (located by characters in the built prompt) in every layer."""
    return AttentionCapture(question_positions(loaded.tokenizer, prompt, question)) if args.capture else None


def captured(capture: AttentionCapture | None, loaded, prompt: str) -> dict[str, Any]:
    """What --capture adds to the JSON: the captured rows, their decoded text and the profile."""
    if capture is None:
        return {}
    ids = encode(loaded.tokenizer, prompt)[0].tolist()
    matrix = stacked(capture)
    return {"capture": {"rows": capture.positions,
                        "rows_text": loaded.tokenizer.decode([ids[i] for i in capture.positions]),
                        "layers": len(capture.prompt), "layer_labels": layer_labels(loaded.model.config),
                        "answer_rows": len(capture.steps), "bytes": capture.bytes,
                        "profile": [round(v, 6) for v in context_profile(matrix)]}}


def probe_task(args: argparse.Namespace) -> dict[str, Any]:
    spec = ProbeSpec(task=args.task, length=args.length, depth=args.depth, seed=args.seed,
                     haystack=args.haystack, params=parse_params(args.param))
    task = get_task(spec.task)
    upload_text = read_upload(args.upload) if args.upload else None
    config = config_from_args(args, default_new_tokens=task.max_new_tokens)
    loaded = MANAGER.get(config.model, first_use_progress)
    store, session_id = _run_log(args)
    spec = remember_upload(store, spec, upload_text)
    instance = build_probe(loaded.tokenizer, spec, config.chat_template, upload_text, max_prompt_tokens(loaded),
                           config.transform)
    capture = capture_for(args, loaded, instance.prompt, instance.question)
    *_, outcome = run_probe(loaded, instance, args.score, config, capture=capture)
    run_id = kept_if_unsaved(lambda: log_probe(store, session_id, config, loaded, outcome))
    return captured(capture, loaded, instance.prompt) | outcome.summary() | {
        "prompt": instance.prompt, "model": config.model.model, "dtype": loaded.dtype_name, "quant": config.model.quant,
        "run_id": run_id, "attention_path": attention_path(loaded.device), "transform": config.transform.label}


def cmd_decode(args: argparse.Namespace) -> dict[str, Any]:
    """One or more decoding methods on a context and question (or the knowledge-conflict set)."""
    methods = args.method or ["greedy"]
    extra = parse_params(args.param)
    if extra and len(methods) > 1:
        raise SpecError("--param applies to one --method; write the settings into each --method instead, "
                        "e.g. --method beam:num_beams=4.")
    specs = [DecodingSpec.parse(m) for m in methods]
    if extra:
        specs = [DecodingSpec(specs[0].method, specs[0].params | extra)]
    config = dataclasses.replace(config_from_args(args, default_new_tokens=32), decoding=specs[0])
    loaded = MANAGER.get(config.model, first_use_progress)
    if args.conflicts:
        if args.knob:  # the first method at each knob value
            rows = list(knob_curve(loaded, config, args.knob, limit=args.limit))
            knob = find_knob(loaded).record(0)
            return {"knob_context_share": conflict_summary(rows, by="knob"), "knob_layer": knob["layer"],
                    "knob_norm": knob["norm"], "rows": rows, "model": config.model.model, "dtype": loaded.dtype_name}
        rows = list(run_conflicts(loaded, config, specs, limit=args.limit))
        return {"summary": conflict_summary(rows), "rows": rows, "model": config.model.model,
                "dtype": loaded.dtype_name}
    if args.question is None or not args.question.strip():
        raise SpecError("--question is empty: give the question to ask about the context (or use --conflicts).")
    prompt = format_prompt(loaded.tokenizer, args.context, args.question, config.chat_template,
                           transform=config.transform)
    plain = format_prompt(loaded.tokenizer, "", args.question, config.chat_template)
    store, session_id = _run_log(args)
    runs = []
    for spec in specs:
        run_config = dataclasses.replace(config, decoding=spec)
        *_, result = run_free(loaded, prompt, run_config, plain_prompt=plain)
        run_id = kept_if_unsaved(lambda: log_generation(store, session_id, "probe", run_config, loaded,
                                                        {"context": args.context, "question": args.question}, result))
        runs.append({"method": spec.label, "text": result.text, "details": result.details,
                     "tokens": [event.to_dict() for event in result.tokens], "new_tokens": result.new_tokens,
                     "seconds": result.seconds, "time_to_first_token": result.ttft,
                     "tokens_per_second": result.tokens_per_second, "finish": result.finish, "run_id": run_id})
    common = {"prompt": prompt, "prompt_tokens": len(encode(loaded.tokenizer, prompt)[0]), "model": config.model.model,
              "dtype": loaded.dtype_name, "device": loaded.device, "attention_path": attention_path(loaded.device)}
    return (runs[0] | common) if len(runs) == 1 else common | {"runs": runs}


def cmd_sift(args: argparse.Namespace) -> dict[str, Any]:
    """A question through the SIFT pipeline, or the mini benchmark (baseline vs SIFT)."""
    config = config_from_args(args, default_new_tokens=32)
    loaded = MANAGER.get(config.model, first_use_progress)
    store, session_id = _run_log(args)
    if args.benchmark:
        rows = []
        for row in run_benchmark(loaded, config, args.limit, args.budget):
            rows.append(row)
            if not args.json:
                print(f"[{len(rows)}] gold {row['gold']} baseline {row['baseline_answer']} SIFT {row['sift_answer']} "
                      f"({row['resolved_at']})", file=sys.stderr)
        summary = benchmark_summary(rows)
        run_id = kept_if_unsaved(lambda: write_run(store, session_id, "sift_benchmark", config, loaded,
                                                   {"limit": args.limit, "budget": args.budget},
                                                   {"summary": summary, "rows": rows}, None))
        return summary | {"rows": rows, "model": config.model.model, "dtype": loaded.dtype_name, "run_id": run_id}
    if args.question is None or not args.question.strip():
        raise SpecError("--question is empty: give the problem to solve (or use --benchmark).")
    *_, result = run_sift(loaded, query_of(args.context, args.question), config, args.budget)
    run_id = kept_if_unsaved(lambda: write_run(store, session_id, "sift", config, loaded,
                                               {"context": args.context, "question": args.question,
                                                "budget": args.budget}, result.to_dict(), None))
    return result.to_dict() | {"model": config.model.model, "dtype": loaded.dtype_name, "run_id": run_id}


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    workers = RayWorkers(args.workers) if args.executor == "ray" and not args.estimate else None  # before any record
    try:
        return open_and_run_sweeps(args, workers)
    finally:
        if workers is not None:
            workers.close()


def open_and_run_sweeps(args: argparse.Namespace, workers: RayWorkers | None) -> dict[str, Any]:
    """Open the sweep (A, and B with --b) or the one to resume, then run it; or only estimate it."""
    if args.resume:
        store = _store()
        jobs = [open_job(store, "", resume_id=args.resume)]
    else:
        if not args.task:
            raise SpecError("sweep needs --task NAME (or --resume SWEEP_ID).")
        spec = SweepSpec(args.task, parse_list(args.lengths, int, "--lengths"),
                         parse_list(args.depths, float, "--depths"), parse_list(args.seeds, int, "--seeds"),
                         args.score, args.haystack, parse_params(args.param))
        upload_text = read_upload(args.upload) if args.upload else None
        config = config_from_args(args, default_new_tokens=get_task(args.task).max_new_tokens)
        configs = [("A", config)] + ([("B", config_with(config, parse_params(args.b)))] if args.b else [])
        if args.estimate:
            return estimate_command([open_job(None, "", c, spec, upload_text=upload_text) for _, c in configs])
        store, session_id = _run_log(args)
        jobs = [open_job(store, session_id, c, spec, upload_text=upload_text, label=f"{args.task} {name}")
                for name, c in configs]
    return sweep_results(args, jobs, store, workers)


def sweep_results(args: argparse.Namespace, jobs: list, store: Store | None, workers: RayWorkers | None) -> dict:
    """Run the jobs (A, and B when compared) and print each cell as it finishes unless --json."""
    results = []
    for job in jobs:
        for row in run_job(job, store, first_use_progress, workers):
            if not args.json:
                print(f"[{len(job.rows)}/{job.total}] {row['key']} correct={row['correct']} "
                      f"score={row['score']:.3f}", file=sys.stderr)
        summary = sweep_summary(job.rows, args.threshold)
        results.append({"sweep_id": job.sweep_id, "status": job.status, "config": job.config.to_dict(),
                        "cells": [{k: r[k] for k in ("length", "depth", "seed", "correct", "score", "prompt_tokens",
                                                       "answer", "expected")} for r in summary["cells"]],
                        "effective_length": summary["effective"]["effective_length"],
                        "threshold": summary["effective"], "u_curve": summary["u_curve"],
                        "executor": f"ray, {len(workers.actors)} workers" if workers else "process",
                        "attention_path": None if workers else
                        attention_path(MANAGER.loaded.device if MANAGER.loaded else "cpu")})
    return results[0] if len(results) == 1 else {"a": results[0], "b": results[1]}


def estimate_command(jobs: list) -> dict[str, Any]:
    """What `sweep` would take, run nothing: starting (this process's own start, timed so far),
    loading the model (timed here as it happens) and the cells, from a short calibration on it."""
    startup = time.time() - psutil.Process().create_time()
    started = time.perf_counter()
    figures = []
    for job in jobs:
        loading = time.perf_counter()
        MANAGER.get(job.config.model, first_use_progress)
        load_seconds = time.perf_counter() - loading
        figures.append(estimate(job) | {"model_load_seconds": round(load_seconds, 1)})
    cells = sum(f["seconds"] for f in figures)
    return {"estimated_seconds": round(startup + cells + sum(f["model_load_seconds"] for f in figures), 1),
            "cells": sum(f["cells"] for f in figures), "cell_seconds": round(cells, 1),
            "startup_seconds": round(startup, 1),
            "model_load_seconds": round(sum(f["model_load_seconds"] for f in figures), 1),
            "seconds_without_sharing": round(sum(f["seconds_without_sharing"] for f in figures), 1),
            "new_tokens_per_cell": figures[0]["new_tokens_per_cell"],
            "estimate_took_seconds": round(time.perf_counter() - started, 1)}


def config_with(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """`config` with --b key=value overrides: model fields (model, quant, dtype, ...) or run fields."""
    data = config.to_dict()
    for key, value in overrides.items():
        if key in ("rope", "mask", "decoding", "transform"):
            specs = {"rope": RopeSpec, "mask": MaskSpec, "decoding": DecodingSpec, "transform": TransformSpec}
            data[key] = specs[key].parse(str(value)).to_dict()
        elif key in data["model"]:
            data["model"][key] = str(value) if key == "model" else value
        elif (key in data and key != "model") or key == "knob":
            data[key] = value
        else:
            settings = [*data["model"], "chat_template", "max_new_tokens", "rope", "mask", "decoding", "transform", "knob"]
            raise SpecError(f"--b {key}=... is not a setting; use one of: {', '.join(settings)}.")
    return RunConfig.from_dict(data)


def cmd_sessions(args: argparse.Namespace) -> dict[str, Any]:
    store = _store()
    if args.session:
        if store.get_session(args.session) is None:
            raise StorageError(f"No session with id '{args.session}'.")
        fields = ("id", "kind", "created_at", "model", "task", "score", "correct", "seconds", "sweep_id")
        return {"session": store.get_session(args.session),
                "runs": [{k: r[k] for k in fields} for r in store.list_runs(args.session, limit=10000)]}
    return {"database": store.url, "sessions": store.list_sessions()}


def cmd_replay(args: argparse.Namespace) -> dict[str, Any]:
    return replay(_store(), args.run_id, first_use_progress)


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    data = export_session(_store(), args.session_id)
    Path(args.file).write_text(json.dumps(data, ensure_ascii=False))
    return {"session_id": args.session_id, "file": args.file, "runs": len(data["runs"])}


def cmd_import(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.file)
    if not path.is_file():
        raise StorageError(f"There is no file {args.file}.")
    store = _store()
    session_id = import_session(store, path.read_bytes())
    return {"session_id": session_id, "runs": len(store.list_runs(session_id, limit=10**6))}


def cmd_tasks(args: argparse.Namespace) -> dict[str, Any]:
    return {"tasks": [{"name": t.name, "description": t.description, "haystack": t.haystack,
                       "scorer": t.scorer, "max_new_tokens": t.max_new_tokens, "params": t.params,
                       "differs": t.differs} for t in load_tasks().values()],
            "unavailable": [{"name": name, "reason": reason} for name, reason in UNAVAILABLE.items()],
            "haystacks": list(entries("source")), "scorers": list(entries("scorer")), "score_modes": list(SCORE_MODES)}


def cmd_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Sweeps over the given tasks and lengths, reported as RULER reports them (a table and its CSV)."""
    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    lengths = parse_list(args.lengths, int, "--lengths")
    config = config_from_args(args, default_new_tokens=32)
    store, session_id = _run_log(args)
    jobs = benchmark_jobs(store, session_id, config, tasks, lengths, args.samples)
    for job in jobs:
        for row in run_job(job, store, first_use_progress):
            if not args.json and not args.csv:
                print(f"{job.spec.task} [{len(job.rows)}/{job.total}] {row['key']} score={row['score']:.3f}",
                      file=sys.stderr)
    table = benchmark_table({job.spec.task: job.rows for job in jobs})
    return table | {"scores": {task: {str(n): v for n, v in by_length.items()} for task, by_length in table["scores"].items()},
                    "average": {str(n): v for n, v in table["average"].items()},
                    "sweep_ids": {job.spec.task: job.sweep_id for job in jobs}, "csv": table_csv(table)}


BUILD_MAX_TOKENS = 2**20  # build runs no model: the cap is on the text alone


def cmd_build(args: argparse.Namespace) -> dict[str, Any]:
    """A task's prompt and gold answer as the model's tokenizer counts them, with no model run."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_source(args.model, first_use_progress)))
    spec = ProbeSpec(args.task, args.length, args.depth, args.seed, args.haystack, parse_params(args.param))
    transform = TransformSpec.parse(args.transform)
    instance = build_probe(tokenizer, spec, not args.no_chat_template, max_tokens=limits().prompt_tokens or BUILD_MAX_TOKENS,
                           transform=transform)
    return {"task": instance.task, "length": spec.length, "depth": spec.depth, "seed": spec.seed,
            "transform": transform.label,
            "prompt": instance.prompt, "expected": list(instance.expected), "spans": list(instance.spans),
            "prompt_tokens": instance.prompt_tokens, "max_new_tokens": instance.max_new_tokens,
            "question": instance.question, "answer_prefix": instance.answer_prefix, "scorer": instance.scorer,
            "differs": get_task(args.task).differs}


def cmd_gallery(args: argparse.Namespace) -> dict[str, Any]:
    """The gallery's cards; --check renders every stored result with no model; --build remakes them."""
    from ui.figures import card_figures

    chosen = [card_named(name) for name in args.card] if args.card else cards()
    if args.build:
        config = config_from_args(args, default_new_tokens=32)
        loaded = MANAGER.get(config.model, first_use_progress)
        for card in chosen:
            started = time.perf_counter()
            with MANAGER.lock:
                *_, step = run_card(loaded, card, config)
            card.stored_path.write_text(json.dumps(stored_record(step.data, time.perf_counter() - started, loaded),
                                                   ensure_ascii=False))
            print(f"[{card.name}] {time.perf_counter() - started:.0f} s: {result_sentence(card, step.data)}",
                  file=sys.stderr)
    if args.check:
        rendered, failed = [], []
        for card in chosen:
            try:
                stored = card.stored()
                if stored is None:
                    raise SpecError(f"not built yet: python app.py gallery --build --card {card.name}")
                for figure in card_figures(card.study, stored["data"]):
                    figure.to_json()
                rendered.append(card.name)
            except Exception as exc:  # a missing or unreadable stored result, or a figure that cannot be built
                failed.append({"card": card.name, "error": f"{type(exc).__name__}: {exc}"})
        return {"rendered": rendered, "failed": failed, "model_loaded": MANAGER.loaded is not None}
    listed = []
    for card in chosen:
        stored = card.stored()
        listed.append({"name": card.name, "title": card.title, "paper": card.paper, "claim": card.claim,
                       "result": result_sentence(card, stored["data"]) if stored else None, "differs": card.differs,
                       "cpu_seconds": stored["seconds"] if stored and stored["device"] == "cpu" else None,
                       "stored_run": str(card.stored_path.relative_to(ASSETS.parent)) if stored else None, "tab": card.tab})
    return {"cards": listed}


def cmd_kinds(args: argparse.Namespace) -> dict[str, Any]:
    listing = catalogue()
    return {args.family: listing[args.family]} if args.family else listing


def kinds_text(listing: dict[str, list[dict]]) -> str:
    """The catalogue as plain text: each kind with its description and settings."""
    lines = []
    for family, kinds in listing.items():
        lines.append(f"{FAMILIES[family].label}s:")
        for kind in kinds:
            lines.append(f"  {kind['name']}: {kind['description']}")
            for setting in kind["settings"]:
                default = "worked out" if setting["default"] is None else setting["default"]
                bounds = f", {setting['range']}" if setting["range"] else ""
                lines.append(f"      {setting['name']} ({setting['type']}, default {default}{bounds}): "
                             f"{setting['meaning']}")
    return "\n".join(lines)


def cmd_check_space(args: argparse.Namespace) -> dict[str, Any]:
    from services.space_check import check_space

    return check_space()


COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "probe": cmd_probe, "decode": cmd_decode, "sift": cmd_sift, "sweep": cmd_sweep, "benchmark": cmd_benchmark,
    "build": cmd_build,
    "tasks": cmd_tasks,
    "kinds": cmd_kinds, "gallery": cmd_gallery, "sessions": cmd_sessions, "replay": cmd_replay,
    "export": cmd_export, "import": cmd_import, "check-space": cmd_check_space}


def build_parser() -> argparse.ArgumentParser:
    parser = LabArgumentParser(
        prog="app.py", description="Context Lab. Without a subcommand: serve the web UI on "
        "GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (default 127.0.0.1:7860).")
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}",
                                     parser_class=LabArgumentParser)
    probe = commands.add_parser("probe", help="ask a question about a context, or run a task preset")
    probe.add_argument("--context", default="", help="the context text (free probe)")
    probe.add_argument("--question", help="the question (free probe)")
    probe.add_argument("--task", help="a task preset (python app.py tasks lists them)")
    probe.add_argument("--length", type=int, default=1000, help="target prompt length in tokens (task)")
    probe.add_argument("--depth", type=float, default=50.0, help="needle depth in percent, 0..100 (task)")
    probe.add_argument("--seed", type=int, default=1)
    probe.add_argument("--score", choices=SCORE_MODES, default="generate",
                       help="generate an answer, or score the gold answer's log-probability")
    probe.add_argument("--haystack", help="override the task's haystack source")
    probe.add_argument("--upload", help="a .txt or .md file as the haystack (with --haystack upload)")
    probe.add_argument("--param", action="append", default=[], help="builder setting key=value (repeatable)")
    probe.add_argument("--capture", action="store_true", help="capture the question's attention rows in every "
                       "layer and head; the JSON's capture holds them, their text and the profile over the prompt")
    add_config_flags(probe)
    add_method_flag(probe)
    decode = commands.add_parser("decode", help="decode a context and question with one or more methods; print "
                                 "the text, the prompt, and every token with its probability")
    decode.add_argument("--context", default="", help="the context text")
    decode.add_argument("--question", help="the question")
    decode.add_argument("--param", action="append", default=[], help="a setting of --method, key=value (repeatable)")
    decode.add_argument("--conflicts", action="store_true",
                        help="run the methods over the knowledge-conflict set instead; print how often each "
                        "follows the context")
    decode.add_argument("--limit", type=int, help="with --conflicts: only the first N items")
    add_config_flags(decode)
    add_method_flag(decode, repeatable=True)
    sift = commands.add_parser("sift", help="solve a problem with SIFT sticker prompting, stage by stage, or run "
                               "the mini benchmark")
    sift.add_argument("--question", help="the problem or question")
    sift.add_argument("--context", default="", help="a context placed before the question")
    sift.add_argument("--benchmark", action="store_true", help="run the mini benchmark: baseline vs SIFT")
    sift.add_argument("--limit", type=int, help="with --benchmark: only the first N problems")
    sift.add_argument("--budget", type=int, default=192, help="new tokens per model call (default 192)")
    add_config_flags(sift)
    add_method_flag(sift)
    sweep = commands.add_parser("sweep", help="run a task over lengths x depths x seeds; print every cell")
    sweep.add_argument("--task", help="a task preset")
    sweep.add_argument("--lengths", default="1000,2000,4000,8000", help="comma-separated prompt lengths")
    sweep.add_argument("--depths", default="0,10,20,30,40,50,60,70,80,90,100", help="comma-separated depths")
    sweep.add_argument("--seeds", default="1", help="comma-separated seeds")
    sweep.add_argument("--score", choices=SCORE_MODES, default="generate")
    sweep.add_argument("--haystack", help="override the task's haystack source")
    sweep.add_argument("--upload", help="a .txt or .md file as the haystack (with --haystack upload)")
    sweep.add_argument("--param", action="append", default=[], help="builder setting key=value (repeatable)")
    sweep.add_argument("--threshold", type=float, help="fixed effective-length threshold (default: 85%% of "
                       "the score at the shortest length)")
    sweep.add_argument("--b", action="append", default=[], metavar="KEY=VALUE",
                       help="run the same sweep again with this setting changed (A/B), e.g. --b dtype=fp32")
    sweep.add_argument("--resume", metavar="SWEEP_ID", help="continue an interrupted sweep")
    sweep.add_argument("--executor", choices=("process", "ray"), default="process",
                       help="run the cells in this process, or on Ray workers (RAY_ADDRESS, else a local cluster)")
    sweep.add_argument("--workers", type=int, help="Ray workers (default: one per GPU, else 2 sharing the cores)")
    sweep.add_argument("--estimate", action="store_true", help="print the estimated time (model load included) "
                       "and run nothing")
    add_config_flags(sweep)
    add_method_flag(sweep)
    sessions = commands.add_parser("sessions", help="list sessions, or one session's runs")
    sessions.add_argument("--session", help="list this session's runs")
    sessions.add_argument("--json", action="store_true", help="print one JSON object")
    replay_parser = commands.add_parser("replay", help="re-run a stored run; report whether it is identical")
    replay_parser.add_argument("run_id")
    replay_parser.add_argument("--json", action="store_true", help="print one JSON object")
    export = commands.add_parser("export", help="write a session to one JSON file")
    export.add_argument("session_id")
    export.add_argument("file")
    export.add_argument("--json", action="store_true", help="print one JSON object")
    import_parser = commands.add_parser("import", help="import a session file (validated; all or nothing)")
    import_parser.add_argument("file")
    import_parser.add_argument("--json", action="store_true", help="print one JSON object")
    benchmark = commands.add_parser("benchmark", help="run tasks over lengths and print a RULER-style table")
    benchmark.add_argument("--tasks", required=True, help="comma-separated task presets, e.g. ruler.niah_single_1,ruler.vt")
    benchmark.add_argument("--lengths", default="4096,8192", help="comma-separated lengths in tokens")
    benchmark.add_argument("--samples", type=int, default=5, help="samples (seeds) per task and length")
    benchmark.add_argument("--csv", action="store_true", help="print the table as CSV only")
    add_config_flags(benchmark)
    add_method_flag(benchmark)
    build = commands.add_parser("build", help="build a task's prompt and gold answer without running a model")
    build.add_argument("--task", required=True, help="a task preset (python app.py tasks lists them)")
    build.add_argument("--length", type=int, required=True, help="prompt length in the model's tokens")
    build.add_argument("--depth", type=float, default=50.0, help="needle depth in percent (lab presets)")
    build.add_argument("--seed", type=int, default=1)
    build.add_argument("--haystack", help="override the task's haystack source (lab presets)")
    build.add_argument("--param", action="append", default=[], help="builder setting key=value (repeatable)")
    build.add_argument("--model", default=ModelSpec.model, help="whose tokenizer counts the tokens")
    build.add_argument("--no-chat-template", action="store_true", help="the raw text, without the chat template")
    build.add_argument("--transform", default="none", help="context transform KIND[:key=value,...], e.g. jrt")
    build.add_argument("--json", action="store_true", help="print one JSON object")
    tasks = commands.add_parser("tasks", help="list the task presets, haystacks and scorers")
    tasks.add_argument("--json", action="store_true", help="print one JSON object")
    gallery = commands.add_parser("gallery", help="list the gallery's cards; --check renders the stored results "
                                  "with no model; --build remakes them on the model")
    gallery.add_argument("--card", action="append", default=[], help="only this card (repeatable)")
    gallery.add_argument("--check", action="store_true", help="render every stored result (no model is loaded)")
    gallery.add_argument("--build", action="store_true", help="run each card's study and store its result")
    add_config_flags(gallery)
    add_method_flag(gallery)
    kinds = commands.add_parser("kinds", help="list every RoPE kind, mask kind, decoding method, task, haystack "
                                "and scorer with its description and settings")
    kinds.add_argument("--family", choices=list(FAMILIES), help="only this family")
    kinds.add_argument("--json", action="store_true", help="print one JSON object")
    check = commands.add_parser("check-space", help="check that this checkout deploys as a Hugging Face Space "
                                "(front matter, requirements, storage, files); exit code 1 when it does not")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        output = COMMANDS[args.command](args)
    except LabError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(output, ensure_ascii=False))
    elif args.command == "benchmark" and args.csv:
        print(output["csv"], end="")
    elif args.command == "kinds":
        print(kinds_text(output))
    elif args.command == "check-space":
        print("ok" if output["ok"] else "problems:\n" + "\n".join(f"- {problem}" for problem in output["problems"]))
        print("\n".join(f"checked: {line}" for line in output["checked"]))
    elif args.command == "gallery" and "cards" in output:
        for card in output["cards"]:
            print(f"{card['name']}: {card['title']} ({card['paper']})\n  {card['claim']}\n  here: "
                  f"{card['result'] or 'not built yet'}")
    else:
        for key, value in output.items():
            print(f"{key}: {value}")
    failed = (args.command == "gallery" and output.get("failed")) or (args.command == "check-space" and not output["ok"])
    return 1 if failed else 0
