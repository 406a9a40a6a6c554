"""The headless command line: the same engines as the UI, printing JSON (no gradio here)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from components.run_log import log_generation
from engines.generation import format_prompt, generate
from engines.models import MANAGER, ModelError, console_progress
from engines.specs import DTYPES, QUANT_4BIT_TYPES, QUANTS, ModelSpec, RunConfig, SpecError
from storage.db import StorageError, Store

USER_ERRORS = (SpecError, ModelError, StorageError)


class LabArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line on stderr and exits with code 2."""

    def error(self, message: str):
        raise SystemExit(_fail(f"{self.prog}: {message}"))


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
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
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--session", help="log into this session id (default: a new session)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    spec = ModelSpec(model=args.model, quant=args.quant, quant_4bit_type=args.quant_4bit_type,
                     dtype=args.dtype, device=args.device)
    return RunConfig(model=spec, chat_template=not args.no_chat_template, max_new_tokens=args.max_new_tokens)


def _store() -> Store:
    return Store()


def cmd_probe(args: argparse.Namespace) -> dict[str, Any]:
    if not args.question.strip():
        raise SpecError("--question is empty: give the question to ask about the context.")
    config = config_from_args(args)
    loaded = MANAGER.get(config.model, console_progress)
    prompt = format_prompt(loaded.tokenizer, args.context, args.question, config.chat_template)
    result = generate(loaded, prompt, config.max_new_tokens)
    store = _store()
    run_id = log_generation(store, args.session or store.new_session("CLI"), "probe", config, loaded,
                            {"context": args.context, "question": args.question}, result)
    return {"answer": result.text, "prompt": prompt, "prompt_tokens": result.prompt_tokens,
            "new_tokens": result.new_tokens, "model": config.model.model, "dtype": loaded.dtype_name,
            "quant": config.model.quant, "device": loaded.device, "seconds": result.seconds,
            "time_to_first_token": result.ttft, "tokens_per_second": result.tokens_per_second,
            "finish": result.finish, "run_id": run_id}


COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"probe": cmd_probe}


def build_parser() -> argparse.ArgumentParser:
    parser = LabArgumentParser(
        prog="app.py", description="Context Lab. Without a subcommand: serve the web UI on "
        "GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (default 127.0.0.1:7860).")
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}",
                                     parser_class=LabArgumentParser)
    probe = commands.add_parser("probe", help="ask a question about a context; print the answer")
    probe.add_argument("--context", default="", help="the context text")
    probe.add_argument("--question", required=True, help="the question")
    add_config_flags(probe)
    return parser


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        output = COMMANDS[args.command](args)
    except USER_ERRORS as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(output, ensure_ascii=False))
    else:
        for key, value in output.items():
            print(f"{key}: {value}")
    return 0
