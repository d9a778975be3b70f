"""The templates themselves: each shared fact written once, typed contexts, honest headers."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends import TARGETS, BuildOptions
from backends.base import SHARED_TEMPLATE_DIR, RopeScalingContext, SpecContext, TemplateContext
from codegen.build import render_target
from spec import LinearRopeScaling, get_preset
from tests.conftest import ROOT

BACKENDS = ROOT / "backends"
TEMPLATES = sorted(BACKENDS.glob("*/templates/**/*.jinja")) + sorted(
    SHARED_TEMPLATE_DIR.glob("*.jinja")
)

# Distinctive text (or a pattern) of each fact the targets share: it must stand in exactly one
# template.
SHARED_FACTS: dict[str, str | re.Pattern[str]] = {
    "llama3 RoPE blend": "(1 - smooth) * inv_freq",
    "llama3 RoPE smooth factor": ".rope_original_max_len / wavelen",
    "llama3 RoPE config field": "rope_low_freq_factor: float =",
    "linear RoPE scaling": re.compile(
        r"return inv_freq / (\{\{ cfg }}|\w+)\.rope_factor$", re.MULTILINE
    ),
    "config head_dim": "return self.dim // self.n_heads",
    "torch RMSNorm body": "torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)",
    "torch RoPE tables": "angles = torch.outer(positions, rope_inv_freq(args{{ long_argument() }}))",
    "YaRN RoPE ramp": "inv_freq / {{ cfg }}.rope_factor * ramp + inv_freq * (1 - ramp)",
    "RoPE attention factor": ".rope_attention_factor){% else %}",
    "torch KV cache buffers": 'self.register_buffer("k", like.new_zeros(shape)',
    "torch KV cache update": "self.k[:batch, :, start_pos:end] = k",
    "torch attention rotation": "q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)",
    "torch weight init": "nn.init.normal_(module.weight, mean=0.0, std=self.args.init_std)",
}


def template_texts() -> dict[str, str]:
    return {str(path.relative_to(BACKENDS)): path.read_text() for path in TEMPLATES}


@pytest.mark.parametrize("fact", SHARED_FACTS)
def test_each_shared_fact_stands_in_one_template(fact):
    pattern = SHARED_FACTS[fact]
    if isinstance(pattern, str):
        pattern = re.compile(re.escape(pattern))
    found = {name: len(pattern.findall(text)) for name, text in template_texts().items()}
    assert sum(found.values()) == 1, {name: n for name, n in found.items() if n}


def fact_lines(text: str) -> list[str]:
    """A template's lines that state something: stripped, without blank lines, Jinja tags,
    macro calls, imports and lone brackets (every file may repeat those)."""
    kept = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line in {'"""', ")", "]", "}", "):"}:
            continue
        if (line.startswith("{%") and line.endswith("%}")) or re.fullmatch(
            r"\{\{ \w+\(.*\) }}", line
        ):
            continue
        if line.startswith(("import ", "from ")):
            continue
        kept.append(line)
    return kept


def test_no_block_of_six_lines_repeats_across_templates():
    # What `duplicates` would flag, over the templates: six facts in a row twice means a block
    # that belongs in backends/shared_templates.
    window = 6
    where: dict[tuple[str, ...], set[str]] = {}
    for name, text in template_texts().items():
        lines = fact_lines(text)
        for i in range(len(lines) - window + 1):
            where.setdefault(tuple(lines[i : i + window]), set()).add(name)
    repeated = {block[0]: sorted(names) for block, names in where.items() if len(names) > 1}
    assert repeated == {}


def test_templates_do_no_arithmetic():
    # Templates iterate and print; the compiler computes (base.py's contexts).
    # Expressions and statements, without the whitespace-control dashes ({%- ... -%}).
    expression = re.compile(r"\{\{-?(.*?)-?}}|\{%[-+]?(.*?)[-+]?%}", re.DOTALL)
    for name, text in template_texts().items():
        for match in expression.finditer(text):
            code = re.sub(r'"[^"]*"|\'[^\']*\'', "", match.group(1) or match.group(2))
            assert not re.search(r"[-+*/%]", code), f"{name}: {match.group(0)}"


def test_templates_import_unguarded():
    # ruff drops the imports a variant does not use, so no template chooses its imports.
    for name, text in template_texts().items():
        lines = text.splitlines()
        for before, line in itertools.pairwise(lines):
            if line.startswith("import ") or (line.startswith("from ") and " import " in line):
                assert "{%" not in line and not before.startswith("{%"), f"{name}: {line}"


@pytest.fixture(scope="module")
def emitted_files() -> dict[tuple[str, str], str]:
    """(target, path) -> text, for a llama3-scaled spec and a linearly scaled one."""
    specs = [
        get_preset("tiny-llama3"),
        get_preset("tiny").model_copy(update={"rope_scaling": LinearRopeScaling(factor=2.0)}),
    ]
    files = {}
    for spec in specs:
        for target in TARGETS:
            for path, data in render_target(spec, target, BuildOptions()).items():
                if path.endswith((".py", ".yaml", ".md")):
                    files[(target, f"{spec.name}/{path}")] = data.decode()
    return files


def test_every_emitted_header_names_its_existing_template(emitted_files):
    for (target, path), text in emitted_files.items():
        named = re.search(r"@generated by llama-codegen \S+ from template (\S+)", text)
        assert named, path
        if named.group(1) == "checked_reader.py":  # the compiler's own reader, emitted verbatim
            assert (
                Path(path).name == "checkpoint_files.py"
                and (BACKENDS / "checked_reader.py").is_file()
            )
            continue
        template_target, _, rest = named.group(1).partition("/")
        assert template_target == target, path
        assert (BACKENDS / target / "templates" / rest).is_file(), (path, named.group(1))
        assert Path(path).name.startswith(Path(rest).name.split(".")[0]), (path, rest)


def test_headers_name_the_architecture_fingerprint(emitted_files):
    spec = get_preset("tiny-llama3")
    text = emitted_files[("torch", "tiny-llama3/model.py")]
    assert f"architecture sha256 {spec.fingerprint()[:16]}" in text


def test_emitted_python_lines_fit_100_columns(emitted_files):
    for (_, path), text in emitted_files.items():
        if not path.endswith(".py"):
            continue
        long = [line for line in text.splitlines() if len(line) > 100]
        assert long == [], path


def test_unused_imports_are_dropped_and_sorted(emitted_files):
    # The Cerebras model imports math unconditionally; only llama3 scaling uses it.
    assert "import math\n" in emitted_files[("cerebras", "tiny-llama3/model.py")]
    assert "import math\n" not in emitted_files[("cerebras", "tiny/model.py")]
    # train.py's sibling module sorts after the third-party imports, in its own block.
    train = emitted_files[("cerebras", "tiny/train.py")]
    assert "from torch import Tensor\n\nfrom model import Model, ModelArgs\n" in train


def test_import_sorting_ignores_the_working_directory(tmp_path, monkeypatch):
    # A `torch/` folder where the build runs (e.g. a previous build's output) must not make
    # ruff treat torch as first-party: builds stay byte-identical wherever they run.
    spec = get_preset("tiny")
    expected = render_target(spec, "torch", BuildOptions())
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert render_target(spec, "torch", BuildOptions()) == expected


def test_a_name_in_two_context_parts_is_refused():
    @dataclass(frozen=True)
    class Clashing(TemplateContext):
        spec: SpecContext
        name: str

    spec = SpecContext.of(get_preset("tiny"), BuildOptions())
    with pytest.raises(TypeError, match="name"):
        Clashing(spec, "other").variables()


def test_spec_context_flattens_and_keeps_rope_scaling_typed():
    variables = SpecContext.of(get_preset("tiny-llama3"), BuildOptions()).variables()
    assert variables["last_layer"] == variables["n_layers"] - 1
    assert isinstance(variables["rope_scaling"], RopeScalingContext)
    assert variables["rope_scaling"].type == "llama3"
