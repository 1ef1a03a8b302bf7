"""Training arguments: YAML config files plus `--key value` overrides, parsed into paddlenlp dataclasses.

Field names follow PaddleMIX's GOT training script and paddlenlp's TrainingArguments. A value given on the command
line wins over the YAML file, which wins over the defaults below (the reference hyper-parameters of GOT).
"""

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import yaml
from paddlenlp.trainer import PdArgumentParser, TrainingArguments

from ..errors import GOTError
from ..hub import DEFAULT_MODEL, MODEL_SOURCES, SOURCE_VARIABLE

CONFIG_FLAGS = ("--config", "-c")


@dataclass
class ModelArguments:
    """Which model to start from and what to train of it."""

    model_name_or_path: str = field(
        default=DEFAULT_MODEL, metadata={"help": "checkpoint directory (any layout) or hub id"}
    )
    model_source: Optional[str] = field(
        default=None,
        metadata={
            "help": f"where a hub id comes from: {', '.join(MODEL_SOURCES)} (default: "
            f"${SOURCE_VARIABLE}, else huggingface)"
        },
    )
    from_scratch: bool = field(
        default=False, metadata={"help": "random weights from the directory's config.json (tiny experiments)"}
    )
    freeze_vision_tower: bool = field(default=False, metadata={"help": "stage 3: keep the vision encoder fixed"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters on the decoder only, merged on save"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scale numerator (scale = alpha / rank)"})


@dataclass
class DataArguments:
    """Where the training data is and how long a sample may be."""

    meta_path: Optional[str] = field(default=None, metadata={"help": "meta file listing the datasets"})
    max_seq_length: int = field(default=8192, metadata={"help": "longest sample in tokens (answers are cut)"})
    strict: bool = field(default=False, metadata={"help": "missing image files stop the run instead of skipping"})


@dataclass
class GOTTrainingArguments(TrainingArguments):
    """paddlenlp's TrainingArguments with GOT's reference hyper-parameters as defaults (docs/design.md §7)."""

    output_dir: str = field(default="output/got_stage2", metadata={"help": "checkpoints and the final model"})
    learning_rate: float = field(default=2e-5, metadata={"help": "peak learning rate"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "learning-rate schedule"})
    warmup_ratio: float = field(default=0.001, metadata={"help": "share of steps spent warming up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    logging_steps: int = field(default=1, metadata={"help": "log every N steps"})
    save_total_limit: Optional[int] = field(default=3, metadata={"help": "checkpoints kept"})
    report_to: Optional[List[str]] = field(default_factory=lambda: ["none"], metadata={"help": "loggers"})


COMMAND_LINE = "on the command line"


BASE_KEY = "base"  # a YAML config may start from another one (its path relative to the file) and change keys


def read_yaml_config(path: str) -> Dict[str, object]:
    """The flat mapping of a YAML config file, on top of its `base:` file if it names one; GOTError naming the
    file when it cannot be one."""
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except OSError as err:
        raise GOTError(f"Cannot read the config file {path}: {err.strerror}.") from err
    except yaml.YAMLError as err:
        raise GOTError(f"{path} is not valid YAML: {str(err).splitlines()[0]}.") from err
    if not isinstance(values, dict):
        raise GOTError(f"{path} must be a mapping of argument names to values.")
    base = values.pop(BASE_KEY, None)
    if base is None:
        return values
    return {**read_yaml_config(os.path.join(os.path.dirname(path), str(base))), **values}


def yaml_arguments(path: str) -> List[str]:
    """The `--key value` list equivalent to a flat YAML mapping (booleans as True/False, lists space-separated)."""
    arguments = []
    for key, value in read_yaml_config(path).items():
        if value is None:
            continue
        arguments.append(f"--{key}")
        if isinstance(value, list):
            arguments.extend(str(item) for item in value)
        else:
            arguments.append(str(value))
    return arguments


def split_config_flag(argv: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """`(config path or None, the remaining arguments)` from a command line."""
    remaining, config = [], None
    iterator = iter(argv)
    for argument in iterator:
        if argument in CONFIG_FLAGS:
            config = next(iterator, None)
            if config is None:
                raise GOTError(f"{argument} needs a YAML file.")
        elif argument.startswith("--config="):
            config = argument.split("=", 1)[1]
        else:
            remaining.append(argument)
    return config, remaining


def option_names(arguments: Sequence[str]) -> List[str]:
    """The option names (without `--`) given in an argument list, `--key=value` included."""
    return [a[2:].split("=", 1)[0] for a in arguments if a.startswith("--") and len(a) > 2]


class TrainingArgumentParser(PdArgumentParser):
    """paddlenlp's parser for the three argument dataclasses that reports a bad value in one sentence, naming
    where the value came from, instead of printing the whole usage."""

    def __init__(self, sources: Dict[str, str]):
        """`sources` maps each given option name to where it came from ("in x.yaml", "on the command line")."""
        super().__init__((ModelArguments, DataArguments, GOTTrainingArguments), allow_abbrev=False)
        self.sources = sources

    def known_names(self) -> List[str]:
        """Every option name the parser takes, without `--`."""
        return sorted(name[2:] for name in self._option_string_actions if name.startswith("--"))

    def check_names(self) -> None:
        """GOTError for the first option that no dataclass has, with its source and the closest valid name."""
        known = set(self.known_names())
        for name, source in self.sources.items():
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f": did you mean {close[0]!r}?" if close else " (see tools/train.py --help)."
                raise GOTError(f"Unknown training argument {name!r} {source}{hint}")

    def error(self, message: str):
        match = re.match(r"argument --([\w-]+)(?:/[^:]*)?: (.*)", message)
        if match is None:
            raise GOTError(f"Bad training arguments: {message}.")
        name, problem = match.groups()
        raise GOTError(f"Bad value for {name!r} {self.sources.get(name, COMMAND_LINE)}: {problem.rstrip('.')}.")


def parse_training_arguments(argv: Sequence[str]):
    """`(ModelArguments, DataArguments, GOTTrainingArguments)` from `[--config X.yaml] [--key value ...]`.

    A key the dataclasses do not know, or a value of the wrong kind, is a GOTError naming the key, where it came
    from (the YAML file or the command line) and, for a misspelt key, the closest valid name.
    """
    config, overrides = split_config_flag(argv)
    from_yaml = yaml_arguments(config) if config else []
    sources = {name: f"in {config}" for name in option_names(from_yaml)}
    sources.update({name: COMMAND_LINE for name in option_names(overrides)})
    parser = TrainingArgumentParser(sources)
    parser.check_names()
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=from_yaml + overrides)
    if not data_args.meta_path:
        raise GOTError("No training data: give --meta_path (or meta_path in the YAML config).")
    return model_args, data_args, training_args
