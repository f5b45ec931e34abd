"""`trainer export`: a run's model as GGUF (llama.cpp, Ollama), or the config in AutoTrain's format."""
from __future__ import annotations

import argparse
import sys

from trainer import __version__
from trainer.commands import Command, SubParsers, add_config_args
from trainer.errors import UserError


def _add_export(sub: SubParsers) -> None:
    p = sub.add_parser("export", help="write a run's model as GGUF (llama.cpp, Ollama), or the config in AutoTrain's format",
                       description="--to gguf: the run's model (adapter merged) as one GGUF file with its tokenizer, chat template and "
                       "stop tokens, written by llama.cpp's converter (built once into the trainer cache). --to ollama: the same "
                       "plus a Modelfile, and the `ollama create` command to run. --to gguf-lora: a LoRA run's adapter alone as a GGUF LoRA "
                       "file (llama.cpp's convert_lora_to_gguf.py), for llama-server --lora over the base model's GGUF. --to autotrain: translate the config into the "
                       "LLM YAML `autotrain --config` reads; with --dir, also the data in AutoTrain's local layout and the model "
                       "as a folder AutoTrain's transformers reads, so `cd DIR && autotrain --config autotrain.yml` trains.")
    p.add_argument("--to", dest="target_format", choices=["gguf", "gguf-lora", "ollama", "autotrain"], required=True, help="the format to write")
    p.add_argument("--run", metavar="DIR", help="gguf/gguf-lora/ollama: the run directory to export")
    p.add_argument("--quant", metavar="TYPE",
                   help="gguf/ollama: f16, bf16, q8_0 (default), or a llama.cpp quantization such as q4_k_m; gguf-lora: f32, f16 (default), bf16 or q8_0")
    p.add_argument("--out", metavar="FILE", help="gguf/gguf-lora: where to write the file (default: <run>/export/<run name>-<quant>.gguf, "
                   "<run name>-lora-<type>.gguf)")
    add_config_args(p, required=False)
    p.add_argument("--dir", metavar="DIR", help="autotrain: write autotrain.yml, data/ and the model folder into DIR (default: print the YAML only)")


def _export(args: argparse.Namespace) -> int:
    if args.target_format in ("gguf", "gguf-lora", "ollama"):
        return _export_model(args)
    return _export_autotrain(args)


def _export_autotrain(args: argparse.Namespace) -> int:
    if not args.config:
        raise UserError("trainer export --to autotrain needs --config FILE (the trainer config to translate).")
    import yaml

    from trainer.backends.autotrain.differences import differences
    from trainer.backends.autotrain.environment import VERSION
    from trainer.backends.autotrain.handover import mixed_precision_for, prepare_handover
    from trainer.backends.autotrain.params import export
    from trainer.config import load_config
    from trainer.models import is_gguf

    config = load_config(args.config, args.overrides)
    for path, message in differences(config):
        print(f"warning: {'.'.join(path)}: {message}", file=sys.stderr)
    if args.dir:
        from pathlib import Path

        work = Path(args.dir).expanduser()
        work.mkdir(parents=True, exist_ok=True)
        prepare_handover(config, work)
        print(f"Wrote {work / 'autotrain.yml'}, {work / 'data'} and the model hand-over. Train with: "
              f"cd {work} && autotrain --config autotrain.yml", file=sys.stderr)
        sys.stdout.write((work / "autotrain.yml").read_text())
        return 0
    document = export(config, mixed_precision=mixed_precision_for(config))
    if is_gguf(config.model.name_or_path):
        print("warning: model.name_or_path is a .gguf file, which AutoTrain cannot read; `trainer export --dir DIR` "
              "writes it out as a folder AutoTrain reads.", file=sys.stderr)
    sys.stdout.write(f"# AutoTrain Advanced {VERSION} config translated from {args.config} by trainer {__version__}.\n"
                     "# data.path must hold train.jsonl with the data.column_mapping columns; `trainer export --dir` writes it.\n")
    sys.stdout.write(yaml.safe_dump(document, sort_keys=False))
    return 0


def _export_model(args: argparse.Namespace) -> int:
    if not args.run:
        raise UserError(f"trainer export --to {args.target_format} needs --run DIR (the run directory whose model to export).")
    from trainer.generate import finished_run

    run = finished_run(args.run)
    if args.target_format == "gguf-lora":
        from trainer.export.lora import export_gguf_lora

        adapter = export_gguf_lora(run, args.quant or "f16", args.out)
        print(adapter)
        print(f"Use it over the base model's GGUF: llama-server -m BASE.gguf --lora {adapter}, or trainer serve --run {run}",
              file=sys.stderr)
        return 0
    args.quant = args.quant or "q8_0"
    if args.target_format == "gguf":
        from trainer.export.gguf import export_gguf

        exported = export_gguf(run, args.quant, args.out)
        print(exported.gguf)
        print(f"Use it: llama-cli -m {exported.gguf} -cnv, or trainer serve --gguf {exported.gguf}", file=sys.stderr)
        return 0
    if args.out:
        raise UserError("--out is for --to gguf; --to ollama writes the GGUF and the Modelfile into <run>/export/.")
    from trainer.export.ollama import write_ollama

    modelfile, command = write_ollama(run, args.quant)
    print(modelfile)
    print(f"Create the Ollama model with:\n  {command}", file=sys.stderr)
    return 0


EXPORT = Command("export", _add_export, _export)
