"""The sandbox instruction templates render in: Jinja's, bounded in what a template may build and spend.

Templates are user-written, so untrusted. Jinja's sandbox keeps them from Python's internals, not from
asking for a 10 GB string (`'a' * 10**10`, which Jinja would even build while compiling), a number of
millions of digits or 10^10 loop turns. Here every way a template can make a value grow or work repeat is
bounded before the work is done:

- `*`, `**`, `+` and `%` are checked before they run (a string or list repeated past MAX_VALUE, a number
  past MAX_NUMBER_BITS) and, being intercepted, are never folded into constants at compile time;
- every loop turn and every call spends one of MAX_STEPS a record and looks at the clock (TIME_BUDGET_S);
- `range` makes at most MAX_STEPS numbers; the filters and string methods that pad, repeat, replace or join
  check the size of what they would make; a template calls only macros, `range`, `dict`, `loop` and plain
  string, list and dict methods;
- what a record's render prints is counted (MAX_PRINTED), and each message is at most MAX_MESSAGE_CHARS
  (checked by `templates.library`, which also bounds a template's own text to MAX_TEMPLATE_CHARS).

The counted limits are the same on every machine, so a record is refused or kept alike on every run; the
clock is only a backstop. A bound crossed raises OverLimit(reason, detail), which
`templates.library.InstructionTemplate.render` turns into a refusal naming the template and the record.
"""
from __future__ import annotations

import functools
import re
import threading
import time
import types

from jinja2 import nodes
from jinja2.filters import FILTERS
from jinja2.runtime import BlockReference, LoopContext, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_MESSAGE_CHARS = 65_536  # a rendered user or assistant message
MAX_VALUE = MAX_MESSAGE_CHARS  # characters and items of a string or list a template builds
MAX_PRINTED = 4 * MAX_MESSAGE_CHARS  # characters a record's render prints in all (macros print twice)
MAX_STEPS = 10_000  # loop turns and calls a record's render may take
MAX_NUMBER_BITS = 4_096  # a number a template multiplies or raises to a power (some 1,200 digits)
TIME_BUDGET_S = 0.25  # a record's render; a backstop to the counted limits above
MAX_TEMPLATE_CHARS = 4_096  # a template's prompt and response together (the shipped ones: 190 at most)
BIG_PRINT = 1_024  # what a template prints is counted from this length on (shorter prints are bounded by MAX_STEPS)

LIMITS = (f"templates are bounded ({MAX_MESSAGE_CHARS:,} characters a message or value, {MAX_STEPS:,} loop "
          f"turns and calls and {TIME_BUDGET_S * 1000:.0f} ms a record; `loom templates lint` checks them)")
# the reasons a record is refused for a bound crossed; `template_failed` (any other error) is not one of them
OVER_LIMITS = ("text_too_long", "template_too_big", "template_too_slow", "template_unsafe")


class OverLimit(Exception):
    """A template went past one of the bounds; `reason` is one of OVER_LIMITS (not a ValueError or TypeError,
    which Jinja's own filters catch)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Budget(threading.local):
    """What the record being rendered (in this thread) may still spend. It is filled when the record first
    spends (a loop turn, a call, an operator, a filter, a long print), so that a plain template, which
    spends nothing, pays one attribute a record for it (`start_record`)."""

    filled = False
    deadline = 0.0
    steps = MAX_STEPS
    printed = MAX_PRINTED


_budget = _Budget()


def start_record() -> None:
    """Called before each record's render: the record starts with the whole budget."""
    _budget.filled = False


def _spending() -> _Budget:
    budget = _budget
    if not budget.filled:
        budget.filled = True
        budget.deadline = time.perf_counter() + TIME_BUDGET_S
        budget.steps = MAX_STEPS
        budget.printed = MAX_PRINTED
    return budget


def _check_clock() -> None:
    if time.perf_counter() > _spending().deadline:
        raise OverLimit("template_too_slow", f"rendering took over {TIME_BUDGET_S * 1000:.0f} ms")


def _spend_step() -> None:
    budget = _spending()
    budget.steps -= 1
    if budget.steps < 0:
        raise OverLimit("template_too_slow", f"over {MAX_STEPS:,} loop turns and calls")
    if time.perf_counter() > budget.deadline:
        raise OverLimit("template_too_slow", f"rendering took over {TIME_BUDGET_S * 1000:.0f} ms")


def _weight(value, limit: int = MAX_VALUE) -> int:
    """Characters and items a value holds, nested ones included (an int: about its digits), counted until
    past `limit`: `[caption] * 1000` weighs a thousand captions."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        total = len(value)
        for item in (*value.keys(), *value.values()) if isinstance(value, dict) else value:
            if total > limit:
                break
            total += _weight(item, limit - total)
        return total
    if isinstance(value, int):
        return 1 + value.bit_length() // 3
    return 1


def _too_big(detail: str) -> OverLimit:
    return OverLimit("template_too_big", detail)


def _bound_size(size: int, what: str) -> None:
    if size > MAX_VALUE:
        raise _too_big(f"{what} would make over {MAX_VALUE:,} characters and items")


# ---- operators: checked before they run -------------------------------------------------------------

def _check_product(left, right) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_NUMBER_BITS:
            raise _too_big(f"multiplies numbers into one of over {MAX_NUMBER_BITS:,} bits")
        return
    sequence, times = (left, right) if isinstance(right, int) else (right, left)
    if isinstance(sequence, (str, bytes, list, tuple)) and isinstance(times, int) and times > 1:
        unit = "characters" if isinstance(sequence, (str, bytes)) else "items"
        _bound_size(_weight(sequence) * times, f"repeating {len(sequence):,} {unit} {times:,} times")


def _check_power(base, exponent) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if (base.bit_length() - 1) * exponent + 1 > MAX_NUMBER_BITS:
            raise _too_big(f"raises a number to the power {exponent:,}, past {MAX_NUMBER_BITS:,} bits")


def _check_concatenation(left, right) -> None:
    if isinstance(left, (str, bytes, list, tuple)) and isinstance(right, (str, bytes, list, tuple)):
        _bound_size(_weight(left) + _weight(right), "adding two sequences")


# a printf-style conversion: its width and precision are what can make it large
_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _check_percent_format(text, arguments) -> None:
    """`text % arguments` (and the `format` filter): no width or precision taken from the arguments, and
    the widths, precisions and arguments together within MAX_VALUE."""
    if not isinstance(text, str):
        return
    size = len(text) + _weight(arguments)
    for width, precision in _PERCENT_FIELD.findall(text):
        if "*" in (width, precision):
            raise _too_big("takes a %-format width from its arguments")
        size += int(width or 0) + int(precision or 0)
        if size > MAX_VALUE:
            break
    _bound_size(size, "a %-format")


_OPERATOR_CHECKS = {"*": _check_product, "**": _check_power, "+": _check_concatenation,
                    "%": _check_percent_format}


# ---- filters, string methods and globals that can make something large ---------------------------------

def _check_padding(width, what: str) -> None:
    if isinstance(width, int) and width > MAX_VALUE:
        raise _too_big(f"{what} pads to {width:,} characters, past {MAX_VALUE:,}")


def _check_replace(text, old, new, count=None) -> None:
    text, old, new = str(text), str(old), str(new)
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    _bound_size(len(text) + found * max(len(new) - len(old), 0), "replace")


def _check_join(items: list, separator) -> None:
    _bound_size(_weight(items) + max(len(items) - 1, 0) * len(str(separator)), "join")


def _check_indent(text, width=4, first=False, blank=False) -> None:
    text = str(text)
    columns = len(width) if isinstance(width, str) else width
    if isinstance(columns, int):
        _bound_size(len(text) + (text.count("\n") + 1) * columns, "indent")


def _check_wordwrap(text, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True) -> None:
    _bound_size(len(str(text)) * max(1, len(str(wrapstring or "\n"))), "wordwrap")


def _check_groups(value, count, fill_with=None) -> None:
    _bound_size(count if isinstance(count, int) else 0, "batch or slice")
    if fill_with is not None and isinstance(count, int):
        _bound_size(count * _weight(fill_with), "batch or slice padding")


def _check_format_filter(value, *args, **kwargs) -> None:
    _check_percent_format(value, kwargs or args)


def _check_sum(iterable, attribute=None, start=0) -> None:
    if not isinstance(start, (int, float)):  # summing lists copies them over and over: quadratic
        raise SecurityError("the sum filter adds numbers only in templates; join lists with a loop")


def _filter(name: str, check=None):
    """Jinja's filter `name`, looking at the clock first (a chain of filters is work too); with `check`,
    refusing arguments that would make something over the bounds; and refusing a result over them (one
    that grows its input a few times over, as `list` or `string` do: a chain of them would grow it
    without bound)."""
    original = FILTERS[name]
    skip = 1 if getattr(original, "jinja_pass_arg", None) else 0  # its environment or context comes first

    @functools.wraps(original)
    def bounded(*args, **kwargs):
        _check_clock()
        if check is not None:
            check(*args[skip:], **kwargs)
        result = original(*args, **kwargs)
        if _weight(result) > MAX_VALUE:
            raise _too_big(f"the {name} filter made over {MAX_VALUE:,} characters and items")
        return result

    return bounded


def _join(original):
    @functools.wraps(original)
    def bounded(eval_ctx, value, d="", attribute=None):
        _check_clock()
        items = list(value)
        _check_join(items, d)
        return original(eval_ctx, items, d, attribute)

    return bounded


# linear in what they are given: bounded by the bounds on their input
_PLAIN_FILTERS = ("abs", "attr", "capitalize", "count", "d", "default", "dictsort", "filesizeformat", "first",
                  "float", "groupby", "int", "items", "last", "length", "list", "lower", "map", "max", "min",
                  "reject", "rejectattr", "reverse", "round", "select", "selectattr", "sort", "string",
                  "striptags", "title", "trim", "truncate", "unique", "upper", "wordcount")
# left out: random (a render must not depend on chance), the escapes, urlencode and urlize (each grows text
# several times over, so a chain of them grows it without bound), pprint, tojson and xmlattr
BOUNDED_FILTERS = {
    **{name: _filter(name) for name in _PLAIN_FILTERS},
    "center": _filter("center", lambda value, width=80: _check_padding(width, "center")),
    "indent": _filter("indent", _check_indent),
    "wordwrap": _filter("wordwrap", _check_wordwrap),
    "replace": _filter("replace", _check_replace),
    "format": _filter("format", _check_format_filter),
    "batch": _filter("batch", _check_groups),
    "slice": _filter("slice", _check_groups),
    "sum": _filter("sum", _check_sum),
    "join": _join(FILTERS["join"]),
}


def bounded_range(*args) -> range:
    """`range` for templates: at most MAX_STEPS numbers."""
    numbers = range(*args)
    try:
        size = len(numbers)
    except OverflowError:
        size = MAX_STEPS + 1
    if size > MAX_STEPS:
        raise _too_big(f"asks for a range of over {MAX_STEPS:,} numbers")
    return numbers


# methods a template may call on its strings, lists and dicts: those that make nothing larger than their
# input, and four that pad (their width is checked), replace and join (their result's size is)
_STRING_METHODS = frozenset((
    "capitalize casefold count endswith find index isalnum isalpha isascii isdecimal isdigit isidentifier "
    "islower isnumeric isprintable isspace istitle isupper lower lstrip partition removeprefix removesuffix "
    "rfind rindex rpartition rsplit rstrip split splitlines startswith strip swapcase title upper "
    "center ljust rjust zfill replace join").split())
_LIST_METHODS = frozenset(("count", "index", "copy"))
_DICT_METHODS = frozenset(("get", "keys", "values", "items", "copy"))
_LOOP_METHODS = frozenset(("cycle", "changed"))
_GLOBALS = {"range": bounded_range, "dict": dict}


def _callable_name(obj) -> str:
    if isinstance(obj, Macro):
        return f"macro {obj.name}"
    owner = getattr(obj, "__self__", None)
    if owner is not None and not isinstance(owner, types.ModuleType):
        return f"{type(owner).__name__}.{getattr(obj, '__name__', '?')}"
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def _checked_arguments(obj, args: tuple) -> tuple:
    """`args` for a call templates may make (string methods' sizes checked; a recursive loop's new
    items counted as loop turns), or SecurityError."""
    if isinstance(obj, (Macro, BlockReference, Undefined)) or any(obj is known for known in _GLOBALS.values()):
        return args
    if isinstance(obj, LoopContext):  # `loop(children)` of a recursive for loop
        return (loop_turns(args[0]), *args[1:]) if args else args
    owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", None)
    if isinstance(obj, types.BuiltinMethodType) and isinstance(owner, str) and name in _STRING_METHODS:
        if name in ("center", "ljust", "rjust", "zfill") and args:
            _check_padding(args[0], f"str.{name}")
        elif name == "replace" and len(args) >= 2:
            _check_replace(owner, *args[:3])
        elif name == "join" and args:
            items = list(args[0])
            _check_join(items, owner)
            return (items, *args[1:])
        return args
    if isinstance(obj, types.BuiltinMethodType) and (
            (isinstance(owner, (list, tuple)) and name in _LIST_METHODS)
            or (isinstance(owner, dict) and name in _DICT_METHODS)):
        return args
    if isinstance(obj, types.MethodType) and isinstance(owner, LoopContext) and name in _LOOP_METHODS:
        return args
    raise SecurityError(f"{_callable_name(obj)} is not something a template may call; templates call macros, "
                        "range, dict, loop and plain string, list and dict methods")


# ---- loops ------------------------------------------------------------------------------------------

LOOP_FILTER = "loom_loop_turns"  # every for loop's items pass through it (see BoundedEnvironment.from_string)


def loop_turns(items):
    """A loop's items, each turn spending a step: a loop of 10^10 turns stops at MAX_STEPS of the record."""
    for item in items:
        _spend_step()
        yield item


def _count_loop_turns(tree: nodes.Template) -> nodes.Template:
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, LOOP_FILTER, [], [], None, None, lineno=loop.lineno)
    return tree


# ---- the environment --------------------------------------------------------------------------------

def _counting(printing_none):
    """What Jinja applies to every printed value: None refused with `printing_none` (an exception class;
    None prints as the word otherwise), a long value's length counted. One function, as it runs for every
    print of every record."""

    def counted(value):
        if value.__class__ is not str:
            if value is None and printing_none is not None:
                raise printing_none()
            value = str(value)
        if len(value) > BIG_PRINT:
            budget = _spending()
            budget.printed -= len(value)
            if budget.printed < 0:
                raise OverLimit("text_too_long", f"printed over {MAX_PRINTED:,} characters")
        return value

    return counted


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with the bounds of this module: intercepted operators, checked calls,
    counted loop turns and prints, bounded filters and globals, no constant folding."""

    intercepted_binops = frozenset(_OPERATOR_CHECKS)

    def __init__(self, printing_none: type[Exception] | None = None, **options):
        # optimized=False: Jinja's optimizer folds constant expressions while compiling; intercepted
        # operators are never folded, and without the optimizer nothing else is either
        super().__init__(finalize=_counting(printing_none), optimized=False, **options)
        self.globals = dict(_GLOBALS)  # no lipsum (text of any size), namespace (state across loop turns)...
        self.filters = {**BOUNDED_FILTERS, LOOP_FILTER: loop_turns}

    def from_string(self, source, globals=None, template_class=None):
        """A template compiled with every for loop's items counted as turns (`loop_turns`)."""
        if isinstance(source, str):
            source = _count_loop_turns(self.parse(source))
        return super().from_string(source, globals, template_class)

    def call_binop(self, context, operator, left, right):
        _OPERATOR_CHECKS[operator](left, right)
        return self.binop_table[operator](left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
        _spend_step()
        for value in (*args, *kwargs.values()):
            if _weight(value) > MAX_VALUE:
                raise _too_big(f"passes {_callable_name(__obj)} a value of over {MAX_VALUE:,} characters and items")
        args = _checked_arguments(__obj, args)
        return __context.call(__obj, *args, **kwargs)
