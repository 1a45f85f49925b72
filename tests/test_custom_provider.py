"""`type: python` providers: the example class loaded by import path, and every loader error."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from proxy.config.model import ProviderConfig
from proxy.errors import UpstreamBadRequest
from proxy.providers.base import Provider
from proxy.providers.custom import load_custom_provider
from proxy.providers.registry import build_provider
from proxy.types import ChatRequest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_module_numbers = itertools.count()


@pytest.fixture
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a throwaway module on sys.path; returns its (unique) import name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"custom_provider_case_{next(_module_numbers)}"
        (tmp_path / f"{name}.py").write_text(source)
        return name

    return write


def python_provider(class_path: str | None, **options: object) -> ProviderConfig:
    return ProviderConfig(name="mine", type="python", class_path=class_path, options=options)


GOOD_PROVIDER = """
from proxy.providers.base import Provider
from proxy.types import ChatResponse, StreamChunk

class Plain(Provider):
    def __init__(self, *, name, options):
        self.options = options  # no self.name on purpose: the loader sets it

    async def complete(self, request, model):
        return ChatResponse(text=self.options["say"], provider=self.name, model=model)

    async def stream(self, request, model):
        yield StreamChunk(text=self.options["say"])
        yield StreamChunk(finish_reason="stop")
"""


# --- the example, through build_provider -----------------------------------------------------------------


async def test_example_provider_works_through_build_provider(examples_on_path: None) -> None:
    provider = build_provider(python_provider("custom_provider:ReverseProvider", uppercase=True, words_per_chunk=1))
    assert isinstance(provider, Provider)
    assert (provider.name, provider.type) == ("mine", "python")
    response = await provider.complete(ChatRequest.from_prompt("hello world"), "reverse-1")
    assert response.text == "DLROW OLLEH"
    assert response.provider == "mine" and response.model == "reverse-1"
    assert response.finish_reason == "stop"
    chunks = [chunk async for chunk in provider.stream(ChatRequest.from_prompt("one two three"), "reverse-1")]
    assert [c.text for c in chunks if c.text] == ["EERHT", " OWT", " ENO"]
    assert chunks[0].model == "reverse-1"
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage is not None


async def test_example_provider_options_and_errors(examples_on_path: None) -> None:
    provider = build_provider(python_provider("custom_provider:ReverseProvider"))
    assert (await provider.complete(ChatRequest.from_prompt("abc"), "m")).text == "cba"
    with pytest.raises(UpstreamBadRequest, match="nothing to reverse"):
        await provider.complete(ChatRequest.from_prompt(""), "m")
    with pytest.raises(ValueError, match=r"raised ValueError: unknown options: colour"):
        build_provider(python_provider("custom_provider:ReverseProvider", colour="red"))


async def test_loader_sets_name_and_type_when_the_class_does_not(write_module) -> None:
    module = write_module(GOOD_PROVIDER)
    provider = load_custom_provider(python_provider(f"{module}:Plain", say="hi"))
    assert (provider.name, provider.type) == ("mine", "python")
    response = await provider.complete(ChatRequest.from_prompt("x"), "m")
    assert (response.text, response.provider) == ("hi", "mine")


def test_options_are_a_plain_dict_copy(write_module) -> None:
    module = write_module(GOOD_PROVIDER)
    cfg = python_provider(f"{module}:Plain", say="hi")
    provider = load_custom_provider(cfg)
    assert type(provider.options) is dict
    assert provider.options == {"say": "hi"}
    assert provider.options is not cfg.options


# --- loader errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("class_path", [None, "", "custom_provider.ReverseProvider", "a:b:c", "a-b:C", "mod:"])
def test_bad_path_format(class_path: str | None) -> None:
    with pytest.raises(ValueError, match=r"provider `mine`: `class` must look like `package.module:ClassName`"):
        load_custom_provider(python_provider(class_path))


def test_module_not_found() -> None:
    with pytest.raises(ValueError, match=r"cannot import module `no_such_module_xyz`: No module named"):
        load_custom_provider(python_provider("no_such_module_xyz:Thing"))


def test_module_whose_own_import_fails_names_the_missing_dependency(write_module) -> None:
    module = write_module("import missing_dependency_abc\n")
    with pytest.raises(ValueError, match=rf"cannot import module `{module}`: .*missing_dependency_abc"):
        load_custom_provider(python_provider(f"{module}:Thing"))


def test_module_whose_code_raises_at_import_is_a_config_problem_not_a_crash(write_module) -> None:
    module = write_module("import os\nKEY = os.environ['NO_SUCH_VARIABLE_XYZ']\n")
    with pytest.raises(ValueError, match=rf"importing module `{module}` raised KeyError: 'NO_SUCH_VARIABLE_XYZ'"):
        load_custom_provider(python_provider(f"{module}:Thing"))


def test_module_with_a_syntax_error(write_module) -> None:
    module = write_module("def broken(:\n")
    with pytest.raises(ValueError, match=rf"module `{module}` has a syntax error"):
        load_custom_provider(python_provider(f"{module}:Thing"))


def test_attribute_missing_suggests_a_close_name(write_module) -> None:
    module = write_module(GOOD_PROVIDER)
    with pytest.raises(ValueError, match=rf"module `{module}` has no attribute `Plian`; did you mean `Plain`\?"):
        load_custom_provider(python_provider(f"{module}:Plian"))


@pytest.mark.parametrize("class_path", ["json:JSONDecoder", "os:sep", "proxy.providers.base:BoundModel"])
def test_not_a_provider_subclass(class_path: str) -> None:
    with pytest.raises(ValueError, match=r"is not a subclass of `proxy.providers.base.Provider`"):
        load_custom_provider(python_provider(class_path))


def test_abstract_class_names_what_is_missing(write_module) -> None:
    module = write_module(
        "from proxy.providers.base import Provider\n"
        "class Half(Provider):\n"
        "    async def complete(self, request, model): ...\n"
    )
    with pytest.raises(ValueError, match=r"does not implement `stream`"):
        load_custom_provider(python_provider(f"{module}:Half"))


def test_constructor_error_includes_its_text(write_module) -> None:
    module = write_module(GOOD_PROVIDER.replace("self.options = options", "raise KeyError('api_token')"))
    with pytest.raises(ValueError, match=r"provider `mine`: `.*:Plain` raised KeyError: 'api_token'"):
        load_custom_provider(python_provider(f"{module}:Plain"))


def test_constructor_with_the_wrong_signature_is_explained(write_module) -> None:
    module = write_module(GOOD_PROVIDER.replace("*, name, options", "api_key"))
    with pytest.raises(ValueError, match=r"raised TypeError: .*unexpected keyword argument"):
        load_custom_provider(python_provider(f"{module}:Plain"))
