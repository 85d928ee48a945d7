"""README.md as a newcomer meets it: every command in it parses, every link leads somewhere, and the TensorBoard
tags its table names are the tags a run of the default config writes."""

import re
import shlex
from dataclasses import fields

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src import export, generate, serve, tune
from src.model import GPT, GPTConfig
from src.train import main
from tests.helpers import REPO, tiny_args

README = (REPO / "README.md").read_text(encoding="utf-8")
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def commands(text: str) -> list[list[str]]:
    """The ``python -m src.…`` commands of the markdown's code blocks, as argument lists (comments dropped)."""
    found = []
    for language, block in re.findall(r"^```(\w*)\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        if language not in ("", "bash", "sh"):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            start = line.find("python -m src.")
            if start >= 0:
                found.append(shlex.split(line[start:], comments=True))
    return found


def test_the_readme_has_the_commands_a_newcomer_runs():
    modules = {cmd[2] for cmd in commands(README)}
    assert {"src.train", "src.generate", "src.export", "src.serve", "src.tune"} <= modules


@pytest.mark.parametrize("cmd", commands(README) + commands((REPO / "docs/training.md").read_text()), ids=shlex.join)
def test_every_command_parses(cmd, workdir, capsys):
    module, args = cmd[2], cmd[3:]
    if module == "src.generate":
        generate.build_parser().parse_args(args)
    elif module == "src.export":
        export.build_parser().parse_args(args)
    elif module == "src.serve":
        serve.build_parser().parse_args(args)
    elif module == "src.tune":
        tune.build_parser().parse_args(args)
    else:
        assert module == "src.train", module
        extra = [] if "--help" in args else ["--print_config"]
        # --config paths are relative to the checkout, as in a fresh clone
        args = [str(REPO / a) if a.startswith("configs/") else a for a in args]
        with pytest.raises(SystemExit) as exit_info:
            main([*args, *extra])
        assert exit_info.value.code in (0, None), capsys.readouterr().err
        if extra:
            yaml.safe_load(capsys.readouterr().out)  # the resolved config, as YAML


def test_every_relative_link_and_image_exists():
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            assert (page.parent / target.split("#")[0]).exists(), f"{page.name} links to {target}"


def table_tags() -> dict[str, set[str]]:
    """The tags of README's TensorBoard table, by where TensorBoard shows them."""
    tags: dict[str, set[str]] = {}
    for where, cell in re.findall(r"^\| (Scalars|Text|Images|Projector) \| (.*?) \|", README, re.MULTILINE):
        tags.setdefault(where, set()).update(re.findall(r"`([^`]+)`", cell))
    return tags


@pytest.mark.slow
def test_the_tag_table_names_what_a_default_config_run_writes(workdir, tiny_corpus):
    """The default config trains with Muon, whose learning rates are logged under the optimizer's own names."""
    default = yaml.safe_load((REPO / "configs/shakespeare_char.yaml").read_text())
    assert default["model"]["optimizer"] == "muon"
    main(["fit", f"--config={REPO / 'configs/shakespeare_char.yaml'}", *tiny_args(tiny_corpus, max_steps=12)])
    run = workdir / "lightning_logs" / "t"
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    written = acc.Tags()
    table = table_tags()
    assert table["Scalars"] == set(written["scalars"])
    assert table["Text"] == {tag.split("/")[0] for tag in written["tensors"] if not tag.startswith("_hparams_")}
    assert {re.sub(r"\d+$", "N", tag) for tag in written["images"]} == table["Images"]
    projector = (run / "projector_config.pbtxt").read_text()
    assert table["Projector"] == set(re.findall(r'tensor_name: "([^":]+)', projector))


def test_the_quick_start_states_the_default_configs_size_and_steps():
    config = yaml.safe_load((REPO / "configs/shakespeare_char.yaml").read_text(encoding="utf-8"))
    size, steps = re.search(r"trains\s+a\s+([\d.]+)M-parameter\s+GPT\s+for\s+([\d,]+)\s+steps", README).groups()
    shape = {f.name: config["model"][f.name] for f in fields(GPTConfig) if f.name in config["model"]}  # options too
    shape["block_size"] = config["data"]["block_size"]
    model = GPT(GPTConfig(vocab_size=65, **shape))  # tiny-shakespeare's 65 characters
    assert f"{model.num_params() / 1e6:.1f}" == size
    assert int(steps.replace(",", "")) == config["trainer"]["max_steps"]
