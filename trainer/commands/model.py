"""Commands that put a trained model to work: eval (against the baselines), generate, chat."""
from __future__ import annotations

import argparse
import sys

from trainer.commands import Command, SubParsers, add_config_args


def _add_eval(sub: SubParsers) -> None:
    p = sub.add_parser("eval", help="compare the fine-tuned model with the untuned model, few-shot prompting and retrieval", description="Evaluate up to four systems (evaluation.systems) on the validation (or evaluation.test) set: the untuned model zero-shot, with few-shot examples, with retrieved similar examples (RAG), and the fine-tuned model; every metric with a 95% bootstrap interval. Writes eval.json, eval.md and eval.png into the run directory.")
    add_config_args(p)
    p.add_argument("--run", metavar="DIR", help="the run directory (default: output.dir of the config)")


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainer.config import load_config
    from trainer.evaluation.report import write_report
    from trainer.evaluation.runner import evaluate_run

    config = load_config(args.config, args.overrides)
    run_dir = Path(args.run or config.output.dir).expanduser()
    evaluation = evaluate_run(config, run_dir, say=lambda text: print(text, file=sys.stderr, flush=True))
    print(write_report(run_dir, evaluation))
    print(f"\nWritten: {run_dir / 'eval.md'}, {run_dir / 'eval.json'}, {run_dir / 'eval.png'}")
    return 0


def _add_generate(sub: SubParsers) -> None:
    p = sub.add_parser("generate", help="answer prompts with a fine-tuned model", description="Answer one prompt (--prompt) or every line of a .jsonl file (--input) with the model of a run directory, greedily.")
    p.add_argument("--run", required=True, metavar="DIR", help="the run directory (output.dir of the config)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one user message")
    src.add_argument("--input", metavar="FILE", help='a .jsonl file of {"messages": [...]} or {"prompt": "..."} lines')
    p.add_argument("--system", help="a system message to put before --prompt")
    p.add_argument("--tools", metavar="FILE", help="a JSON list of tools the model may call (a line's own \"tools\" wins); calls are parsed into \"tool_calls\"")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)


def _generate(args: argparse.Namespace) -> int:
    import json

    from trainer.generate import generate, load_run, read_prompts_with_tools
    from trainer.tools import load_tools, parse_tool_calls

    default_tools = load_tools(args.tools) if args.tools else None
    if args.prompt is not None:
        conversations = [([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": args.prompt}]]
        tools = [default_tools]
    else:
        conversations, tools = read_prompts_with_tools(args.input)
        tools = [t or default_tools for t in tools]
    loaded = load_run(args.run)
    answers = generate(loaded, conversations, args.max_new_tokens, args.batch_size, tools=tools)
    if args.prompt is not None:
        print(answers[0].text)
    else:
        for answer, offered in zip(answers, tools):
            line = {"answer": answer.text, "prompt_tokens": answer.prompt_tokens, "generated_tokens": answer.generated_tokens}
            if answer.reasoning is not None:  # gpt-oss: its analysis channel
                line["reasoning"] = answer.reasoning
            if offered:
                line["tool_calls"] = parse_tool_calls(answer.text)  # None: the answer tries a call but it is malformed
            print(json.dumps(line, ensure_ascii=False))
    return 0


def _add_chat(sub: SubParsers) -> None:
    p = sub.add_parser("chat", help="talk to a fine-tuned model", description="An interactive chat with the model of a run directory, streaming its answers.")
    p.add_argument("--run", required=True, metavar="DIR", help="the run directory (output.dir of the config)")
    p.add_argument("--system", help="a system message for the conversation")
    p.add_argument("--tools", metavar="FILE", help="a JSON list of tools the model may call; its calls are shown, and you type each result")
    p.add_argument("--max-new-tokens", type=int, default=512)


def _chat(args: argparse.Namespace) -> int:
    from trainer.generate import chat, load_run
    from trainer.tools import load_tools

    chat(load_run(args.run), args.system, args.max_new_tokens, load_tools(args.tools) if args.tools else None)
    return 0


EVAL = Command("eval", _add_eval, _eval)
GENERATE = Command("generate", _add_generate, _generate)
CHAT = Command("chat", _add_chat, _chat)
