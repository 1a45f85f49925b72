"""The Jinja2 sandbox prompt templates are checked and rendered in, with limits on the values an expression builds.

The rendered output is capped afterwards (1 MiB, `proxy.templates.MAX_RENDERED_BYTES`), but an expression such as
`{{ 'x' * 10**9 }}` or `{{ 10 ** (10**10) }}` would allocate gigabytes or run for minutes before the first byte
of output reaches that cap. `BoundedSandbox` checks the size of the result *before* the work is done, wherever a
template can build something big in one step:

- operators: `*` and `+` on text and lists, `~`, `%` formatting, `**` and `*` on whole numbers;
- text methods and filters that pad, repeat or join: `ljust`, `rjust`, `center`, `zfill`, `expandtabs`,
  `replace`, `join`, `translate`, `format`, `int.to_bytes`; the filters `center`, `indent`, `format`, `join`,
  `replace`, `wordwrap`, `tojson`, `pprint`, `sum`, `slice`, `batch`, `string`; the `lipsum` global;
- the text of macros, `{% set %}` and `{% filter %}` blocks, and values printed with `{{ }}`;
- the work of one render: inside `render_budget()`, loop iterations and calls (methods, globals; a macro call
  counts `MACRO_CALL_STEPS`) together are limited to `MAX_RENDER_STEPS`, so nested loops or a macro that calls
  itself twice cannot run for minutes without output. Work in proportion to a value's size (building or copying
  text or a list, a filter or method on it, slicing it, `in`) costs a step per `STEP_SIZE` characters or items.

Text is limited to `MAX_TEXT_CHARS` characters (the output cap, so no limit bites a prompt that could be sent),
lists to `MAX_ITEMS` items, whole numbers to `MAX_NUMBER_DIGITS` digits (Python's own limit for printing one).
Going past a limit raises `TemplateLimitError` naming the operation. Jinja's sandbox already caps `range()` at
100,000 items.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, MappingView
from contextlib import contextmanager
from contextvars import ContextVar
from functools import update_wrapper
from types import BuiltinMethodType, MethodType
from typing import Any

from jinja2 import filters, nodes, pass_environment, pass_eval_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter, SecurityError
from jinja2.utils import Namespace, generate_lorem_ipsum

MAX_TEXT_CHARS = 1024 * 1024  # the rendered-output cap, in characters
MAX_ITEMS = 1024 * 1024
MAX_NUMBER_DIGITS = 4300  # Python refuses to print a longer whole number (sys.get_int_max_str_digits())
MAX_LIPSUM_WORDS = 100_000
MAX_RENDER_STEPS = 1_000_000  # loop iterations and calls in one render: about a second of CPU
MACRO_CALL_STEPS = 10  # a macro call costs about ten loop iterations
STEP_SIZE = 1024  # characters or items of work in proportion to a value's size that cost one step
_MAX_NUMBER_BITS = math.ceil(MAX_NUMBER_DIGITS / math.log10(2))
_PRINTF_SPEC = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[#0\- +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?(?P<type>.)?"
)
_DIGITS = re.compile(r"\d+")


class TemplateLimitError(SecurityError):
    """A template expression would build a value past one of the sandbox's limits."""


class _Steps:
    __slots__ = ("left",)

    def __init__(self, steps: int) -> None:
        self.left = steps

    def take(self, steps: int = 1) -> None:
        self.left -= steps
        if self.left < 0:
            raise TemplateLimitError(f"the template ran more than {MAX_RENDER_STEPS:,} loop iterations and calls")


_STEPS: ContextVar[_Steps | None] = ContextVar("template_render_steps", default=None)


@contextmanager
def render_budget(steps: int = MAX_RENDER_STEPS) -> Iterator[None]:
    """Renders inside this block share one budget of `steps` loop iterations and calls."""
    token = _STEPS.set(_Steps(steps))
    try:
        yield
    finally:
        _STEPS.reset(token)


def _charge(size: int) -> None:
    """Take the steps of work in proportion to `size` characters or items."""
    if size >= STEP_SIZE and (steps := _STEPS.get()) is not None:
        steps.take(size // STEP_SIZE)


def _charge_for(value: Any) -> None:
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
        _charge(len(value))


def counted(iterable: Iterable[Any]) -> Iterator[Any]:
    """What a `{% for %}` loop iterates: `iterable`, taking one step of the render budget per item."""
    steps = _STEPS.get()
    if steps is None:
        yield from iterable
        return
    for item in iterable:
        steps.take()
        yield item


def _too_long(what: str) -> TemplateLimitError:
    subject = what if what.startswith(("the text of", "the printed")) else f"the result of {what}"
    return TemplateLimitError(f"{subject} would be longer than {MAX_TEXT_CHARS:,} characters")


def _too_many(what: str) -> TemplateLimitError:
    return TemplateLimitError(f"the result of {what} would have more than {MAX_ITEMS:,} items")


def _over(size: int, what: str) -> None:
    if size > MAX_TEXT_CHARS:
        raise _too_long(what)


def _check_text(size: int, what: str) -> None:
    """Refuse text of `size` characters past the limit; else take the steps for building it."""
    _over(size, what)
    _charge(size)


def _check_items(size: int, what: str) -> None:
    if size > MAX_ITEMS:
        raise _too_many(what)
    _charge(size)


def printed_size(value: Any, limit: int = MAX_TEXT_CHARS, *, indent: int = 0) -> int:
    """A lower estimate of the characters `str(value)` (or JSON with `indent`) has; stops counting past `limit`.

    Text counts its length, containers their items plus two characters each (and `indent` per level of depth),
    anything else one character. Every value counts at least one, so this ends after at most `limit` steps even
    on a value that contains itself."""
    if isinstance(value, str | bytes):
        return len(value)
    size = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack and size <= limit:
        item, depth = stack.pop()
        if isinstance(item, str | bytes):
            size += len(item) + 2
            continue
        if isinstance(item, Namespace):
            item = object.__getattribute__(item, "_Namespace__attrs")
        if isinstance(item, Mapping):
            size += 2 + depth * indent
            stack.extend((part, depth + 1) for pair in list(item.items())[:limit] for part in pair)
        elif isinstance(item, list | tuple | set | frozenset | MappingView):
            size += 2 + depth * indent
            stack.extend((part, depth + 1) for part in list(item)[:limit])
        else:
            size += 1 + depth * indent
    return size


def _text(value: Any, what: str) -> str:
    """`str(value)`, refused when it would be longer than the text limit."""
    if not isinstance(value, str):
        _check_text(printed_size(value), what)
    return str(value)


def _count(value: Any) -> int | None:
    """`value` as a count (whole numbers and booleans), else None."""
    return operator.index(value) if isinstance(value, int) else None


# --- operators ------------------------------------------------------------------------------------------


def _check_multiply(left: Any, right: Any) -> None:
    for seq, times in ((left, _count(right)), (right, _count(left))):
        if times is None:
            continue
        if isinstance(seq, str | bytes):
            _check_text(len(seq) * times, "`*`")
        elif isinstance(seq, list | tuple):
            _check_items(len(seq) * times, "`*`")
    both_numbers = isinstance(left, int) and isinstance(right, int)
    if both_numbers and abs(left).bit_length() + abs(right).bit_length() > _MAX_NUMBER_BITS + 1:
        raise _too_big_number("`*`")


def _too_big_number(what: str) -> TemplateLimitError:
    return TemplateLimitError(f"the result of {what} would be a number with more than {MAX_NUMBER_DIGITS:,} digits")


def _check_power(base: Any, exponent: Any) -> None:
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 0 or abs(base) <= 1:
        return
    if exponent * math.log2(abs(base)) > _MAX_NUMBER_BITS:
        raise _too_big_number("`**`")


def _check_add(left: Any, right: Any) -> None:
    if isinstance(left, str | bytes) and isinstance(right, str | bytes):
        _check_text(len(left) + len(right), "`+`")
    elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
        _check_items(len(left) + len(right), "`+`")


def _check_printf(template: Any, values: Any, what: str) -> None:
    """`template % values` (printf-style) would stay within the text limit: widths, precisions and the values."""
    if not isinstance(template, str | bytes):
        return
    text = template.decode("latin-1") if isinstance(template, bytes) else template
    positional = list(values) if isinstance(values, tuple) else [values]
    mapping = values if isinstance(values, Mapping) else None
    size = len(text)
    index = 0
    for match in _PRINTF_SPEC.finditer(text):
        if match["type"] == "%":
            continue
        for part in ("width", "precision"):
            number = match[part]
            if number == "*":
                number = positional[index] if index < len(positional) else 0
                index += 1
            number = _count(number if not isinstance(number, str) else int(number)) or 0
            if number > MAX_TEXT_CHARS:
                raise _too_long(what)
            size += number
        if match["key"] is not None and mapping is not None:
            value = mapping.get(match["key"])
        else:
            value = positional[index] if index < len(positional) else None
            index += 1
        size += printed_size(value)
        _over(size, what)
    _charge(size)


class _Formatter(SandboxedFormatter):
    """`str.format` in the sandbox, with every field's width and precision and the whole result bounded."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.size = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        if any(int(number) > MAX_TEXT_CHARS for number in _DIGITS.findall(format_spec)):
            raise _too_long("`format`")
        _over(self.size + printed_size(value), "`format`")
        text = super().format_field(value, format_spec)
        self.size += len(text)
        _over(self.size, "`format`")
        return text


# --- methods and globals --------------------------------------------------------------------------------


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], position: int, name: str, default: Any) -> Any:
    return args[position] if len(args) > position else kwargs.get(name, default)


def _replaced_size(text: Any, old: Any, new: Any, count: Any) -> int:
    if not (isinstance(text, str | bytes) and type(old) is type(text) and type(new) is type(text)):
        return 0
    found = text.count(old)
    limit = _count(count)
    if limit is not None and limit >= 0:
        found = min(found, limit)
    return len(text) + found * max(0, len(new) - len(old))


def _joined_size(separator: Any, items: list[Any]) -> int:
    size = len(separator) * max(0, len(items) - 1)
    for item in items:
        size += printed_size(item)
        if size > MAX_TEXT_CHARS:
            break
    return size


def _checked_method(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Check a call of a text or number method before it runs; the arguments to call it with."""
    owner, name = obj.__self__, obj.__name__
    what = f"`{name}`"
    if (
        isinstance(owner, int)
        and name == "to_bytes"
        and (_count(_argument(args, kwargs, 0, "length", 1)) or 0) > MAX_TEXT_CHARS
    ):
        raise _too_long(what)
    if not isinstance(owner, str | bytes):
        return args
    if name in ("ljust", "rjust", "center", "zfill"):
        if (_count(_argument(args, kwargs, 0, "width", 0)) or 0) > MAX_TEXT_CHARS:
            raise _too_long(what)
    elif name == "expandtabs":
        tab = _count(_argument(args, kwargs, 0, "tabsize", 8)) or 0
        _check_text(len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * tab, what)
    elif name == "replace":
        old, new = _argument(args, kwargs, 0, "old", ""), _argument(args, kwargs, 1, "new", "")
        _check_text(_replaced_size(owner, old, new, _argument(args, kwargs, 2, "count", -1)), what)
    elif name == "join" and args:
        items = list(args[0])
        _check_text(_joined_size(owner, items), what)
        return (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str | bytes)), default=1)
        _check_text(len(owner) * max(1, longest), what)
    return args


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """Jinja's `lipsum`, refused when it would make more than `MAX_LIPSUM_WORDS` words."""
    if (_count(n) or 0) * (_count(max) or 0) > MAX_LIPSUM_WORDS:
        raise TemplateLimitError(f"`lipsum` would make more than {MAX_LIPSUM_WORDS:,} words")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


# --- filters --------------------------------------------------------------------------------------------


def _center(value: Any, width: int = 80) -> str:
    if (_count(width) or 0) > MAX_TEXT_CHARS:
        raise _too_long("the `center` filter")
    return filters.do_center(_text(value, "the `center` filter"), width)


def _indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = _text(s, "the `indent` filter")
    unit = len(width) if isinstance(width, str) else (_count(width) or 0)
    _check_text(len(text) + (text.count("\n") + 1) * unit, "the `indent` filter")
    return filters.do_indent(text, width, first, blank)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    text = _text(value, "the `format` filter")
    _check_printf(text, kwargs or args, "the `format` filter")
    return filters.do_format(text, *args, **kwargs)


@pass_eval_context
def _join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: str | int | None = None) -> str:
    items = list(value)
    _check_text(_joined_size(str(d), items), "the `join` filter")
    return filters.sync_do_join(eval_ctx, items, d, attribute)


@pass_eval_context
def _replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> str:
    text = _text(s, "the `replace` filter")
    _check_text(_replaced_size(text, str(old), str(new), count), "the `replace` filter")
    return filters.do_replace(eval_ctx, text, old, new, count)


@pass_environment
def _wordwrap(environment: Any, s: Any, width: int = 79, break_long_words: bool = True, wrapstring: Any = None,
              break_on_hyphens: bool = True) -> str:  # fmt: skip
    text = _text(s, "the `wordwrap` filter")
    joint = environment.newline_sequence if wrapstring is None else str(wrapstring)
    # Greedy wrapping: two lines in a row hold more than `width` characters, so there are at most about
    # 2 * len / width lines in each paragraph.
    lines = 2 * len(text) // max(1, _count(width) or 1) + text.count("\n") + 2
    _check_text(len(text) + lines * len(joint), "the `wordwrap` filter")
    return filters.do_wordwrap(environment, text, width, break_long_words, wrapstring, break_on_hyphens)


@pass_eval_context
def _tojson(eval_ctx: Any, value: Any, indent: int | None = None) -> Any:
    step = len(indent) if isinstance(indent, str) else (_count(indent) or 0)
    _check_text(printed_size(value, indent=step + 1 if indent is not None else 0), "the `tojson` filter")
    return filters.do_tojson(eval_ctx, value, indent)


def _pprint(value: Any) -> str:
    _check_text(printed_size(value, indent=1), "the `pprint` filter")
    return filters.do_pprint(value)


def _string(value: Any) -> str:
    return filters.soft_str(_text(value, "the `string` filter"))


@pass_environment
def _sum(environment: Any, iterable: Iterable[Any], attribute: str | int | None = None, start: Any = 0) -> Any:
    if isinstance(start, int | float):
        return filters.sync_do_sum(environment, iterable, attribute, start)
    if attribute is not None:
        iterable = map(filters.make_attrgetter(environment, attribute), iterable)
    total = start
    for item in iterable:
        _check_add(total, item)
        total = total + item
    return total


def _slice(value: Any, slices: int, fill_with: Any = None) -> Any:
    _check_items(_count(slices) or 0, "the `slice` filter")
    return filters.sync_do_slice(value, slices, fill_with)


def _batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
    if fill_with is not None:
        _check_items(_count(linecount) or 0, "the `batch` filter")
    return filters.do_batch(value, linecount, fill_with)


_FILTERS: dict[str, Callable[..., Any]] = {
    "center": _center,
    "indent": _indent,
    "format": _format,
    "join": _join,
    "replace": _replace,
    "wordwrap": _wordwrap,
    "tojson": _tojson,
    "pprint": _pprint,
    "string": _string,
    "sum": _sum,
    "slice": _slice,
    "batch": _batch,
}


# --- the environment ------------------------------------------------------------------------------------


def _bounded_join(parts: Iterable[Any]) -> str:
    """`''.join` for the text of macros and blocks (its parts are text already), refused past the text limit."""
    collected = list(parts)
    if not all(isinstance(part, str) for part in collected):
        collected = [_text(part, "the text of a block or macro") for part in collected]
    _check_text(sum(map(len, collected)), "the text of a block or macro")
    return "".join(collected)


def _bounded_tilde(parts: Iterable[Any]) -> str:
    """The `~` operator: its operands as text, refused past the text limit."""
    collected: list[str] = []
    size = 0
    for part in parts:
        text = _text(part, "`~`")
        size += len(text)
        _over(size, "`~`")
        collected.append(text)
    _charge(size)
    return "".join(collected)


def _finalize(value: Any) -> Any:
    """Every `{{ }}` value: `none` prints as nothing (an optional argument that was not given must not put
    "None" into a prompt); a list or object is refused before it is turned into too much text."""
    if value is None:
        return ""
    if not isinstance(value, str | int | float):
        _check_text(printed_size(value), "the printed value")
    return value


def _metered(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that first takes the steps for the size of the value it works on."""
    position = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    def metered(*args: Any, **kwargs: Any) -> Any:
        if len(args) > position:
            _charge_for(args[position])
        return function(*args, **kwargs)

    return update_wrapper(metered, function)  # keeps Jinja's pass_context/pass_environment mark


def _sliced(value: Any, part: slice) -> Any:
    """`value[start:stop:step]`, taking the steps for the size of `value` (a slice copies)."""
    _charge_for(value)
    return value[part]


def _contains(item: Any, container: Any) -> bool:
    """The `in` test, taking the steps for the size of the container."""
    _charge_for(container)
    return item in container


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator, with `~` going through the environment's bounded join, and `in` and slices
    through the render budget."""

    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        if not isinstance(node.arg, nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        self.write("environment.sliced(")
        self.visit(node.node, frame)
        self.write(", slice(")
        for part in (node.arg.start, node.arg.stop, node.arg.step):
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
            self.write(", ")
        self.write("))")

    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        if len(node.ops) != 1 or node.ops[0].op not in ("in", "notin"):
            super().visit_Compare(node, frame)
            return
        self.write("(not environment.contains(" if node.ops[0].op == "notin" else "(environment.contains(")
        self.visit(node.expr, frame)
        self.write(", ")
        self.visit(node.ops[0].expr, frame)
        self.write("))")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.tilde((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with the size limits of this module."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(_bounded_join)  # type: ignore[assignment]
    tilde = staticmethod(_bounded_tilde)
    contains = staticmethod(_contains)
    sliced = staticmethod(_sliced)

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_finalize, **options)
        self.filters.update(_FILTERS)
        self.filters.update({name: _metered(function) for name, function in self.filters.items()})
        self.globals["lipsum"] = _lipsum

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_multiply(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "+":
            _check_add(left, right)
        elif operator == "%":
            _check_printf(left, right, "`%`")
        return self.binop_table[operator](left, right)

    def _generate(self, source: Any, name: str | None, filename: str | None, defer_init: bool = False) -> str:
        """Compile with every `{% for %}` iterating through `counted` (the render budget)."""
        if isinstance(source, nodes.Template):
            for loop in source.find_all(nodes.For):
                step = nodes.ImportedName(f"{__name__}.counted", lineno=loop.iter.lineno)
                loop.iter = nodes.Call(step, [loop.iter], [], None, None, lineno=loop.iter.lineno)
        return super()._generate(source, name, filename, defer_init=defer_init)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        steps = _STEPS.get()
        if steps is not None:
            steps.take(MACRO_CALL_STEPS if isinstance(obj, Macro) else 1)
        if isinstance(obj, BuiltinMethodType | MethodType):
            _charge_for(obj.__self__)
            if isinstance(obj.__self__, str | bytes | int):
                args = _checked_method(obj, args, kwargs)
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` and `str.format_map` through the bounded formatter (Jinja's own, with `_Formatter`)."""
        if not isinstance(value, MethodType | BuiltinMethodType) or value.__name__ not in ("format", "format_map"):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        is_format_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs, args = args[0], ()
            formatter = _Formatter(self)
            text = type(owner)(formatter.vformat(owner, args, kwargs))
            _charge(len(owner) + formatter.size)
            return text

        return update_wrapper(wrapper, value)


__all__ = [
    "MACRO_CALL_STEPS",
    "MAX_ITEMS",
    "MAX_NUMBER_DIGITS",
    "MAX_RENDER_STEPS",
    "MAX_TEXT_CHARS",
    "STEP_SIZE",
    "BoundedSandbox",
    "TemplateLimitError",
    "counted",
    "printed_size",
    "render_budget",
]
