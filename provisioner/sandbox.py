"""The manifests' Jinja2 sandbox: no attribute of any helper, no files, bounded size and time.

A manifest comes from a pull request, so rendering it must not reach Python internals or the
helpers' state, and must end quickly whatever it asks for. This module reads no environment
variable (env() is built in manifest/render.py over trust.EnvPolicy) and no message it raises quotes a
value the template computed.
"""

from __future__ import annotations

import ctypes
import functools
import re
import sys
import threading
from collections.abc import Callable, ItemsView, Iterable, KeysView, Mapping, ValuesView
from typing import Any, TypeVar, cast

import jinja2
import jinja2.compiler
import jinja2.nodes
import jinja2.runtime
import jinja2.sandbox
import jinja2.utils

#: Wall-clock seconds one file may take to compile and render. Tests lower it; nothing else may.
RENDER_SECONDS = 10.0
#: Characters (or items) any one operation may produce, and how big a number argument may be.
MAX_VALUE = 1 << 20
#: Characters one file may render to (the size a manifest file may have).
MAX_OUTPUT = 8 << 20
#: Bits an integer result may have.
MAX_INT_BITS = 1 << 16

T = TypeVar("T")

# str methods a template may call: those whose result is no bigger than their inputs, and the
# width-taking ones (whose width is checked). format, translate, expandtabs and the rest are not.
_STR_METHODS = frozenset(
    {
        "capitalize", "casefold", "center", "count", "endswith", "find", "index", "isalnum", "isalpha",
        "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric", "isprintable",
        "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "partition",
        "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit",
        "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title", "upper", "zfill",
    }
)
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


class TemplateLimit(Exception):
    """A template asked for more than the budget allows; the message names the operation only."""


class TemplateTimeout(Exception):
    """A template ran past RENDER_SECONDS."""


class _Deadline(BaseException):
    # Raised asynchronously in the rendering thread; BaseException so that no `except Exception`
    # inside Jinja swallows it.
    pass


def _size(value: object) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict) else 0


_FLAT = (list, tuple, set, frozenset, KeysView, ValuesView, ItemsView)


def _weight(value: object, budget: int = MAX_VALUE) -> int:
    """What printing or comparing `value` costs: the characters of its strings, the digits of its
    numbers and one per item, through every container it holds (a list holding one list a thousand
    times weighs a thousand of them: its repr, tojson or == is one C call over all of them, which the
    deadline cannot interrupt). Stops counting just past `budget`, so it is cheap on any value."""
    total = 0
    pending = [value]
    while pending and total <= budget:
        item = pending.pop()
        if isinstance(item, jinja2.utils.Namespace):
            item = item._Namespace__attrs  # it prints them all
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1  # more than its decimal digits
        elif isinstance(item, Mapping):
            total += len(item)
            if total <= budget:
                pending.extend(item.keys())
                pending.extend(item.values())
        elif isinstance(item, _FLAT):
            total += len(item)
            if total <= budget:
                pending.extend(item)
        else:
            total += 1
    return total


def _check_weight(what: str, values: Iterable[object]) -> None:
    for value in values:
        if _weight(value) > MAX_VALUE:
            raise _too_big(what)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _too_big(what: str) -> TemplateLimit:
    return TemplateLimit(f"{what} would produce more than {MAX_VALUE:,} characters or items")


def _too_many_bits(what: str) -> TemplateLimit:
    return TemplateLimit(f"{what} would produce a number of more than {MAX_INT_BITS:,} bits")


def _check_result(what: str, value: T) -> T:
    if _weight(value) > MAX_VALUE:
        raise _too_big(what)
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _too_many_bits(what)
    return value


def _check_numbers(what: str, values: Iterable[object]) -> None:
    for value in values:
        if _is_int(value) and abs(value) > MAX_VALUE:  # type: ignore[arg-type]
            raise TemplateLimit(f"{what}: a number argument larger than {MAX_VALUE:,}")


def _check_printf(what: str, fmt: str) -> None:
    for m in _PRINTF_SPEC.finditer(fmt):
        for part in m.groups():
            if part == "*":
                raise TemplateLimit(f"{what}: a * width or precision is not available in manifests")
            if part is not None and int(part) > MAX_VALUE:
                raise TemplateLimit(f"{what}: a width or precision larger than {MAX_VALUE:,}")


def _check_replace(what: str, text: object, new: object) -> None:
    if isinstance(text, str) and isinstance(new, str) and len(text) + (len(text) + 1) * len(new) > MAX_VALUE:
            raise TemplateLimit(f"{what} could produce more than {MAX_VALUE:,} characters")


def _check_join(what: str, items: object, separator: object = "") -> None:
    # The separator is written between every two items: 1,500 items joined by 1 MB make 1.5 GB.
    if isinstance(items, list | tuple):
        between = _size(separator) * max(len(items) - 1, 0)
        if sum(_size(x) or 8 for x in items) + between > MAX_VALUE:
            raise TemplateLimit(f"{what} would produce more than {MAX_VALUE:,} characters")


#: Filters a manifest cannot use: pprint's output grows with the nesting depth of every item, in a
#: pure-Python loop that builds all of it before any check (and YAML has no use for it).
_REFUSED_FILTERS = frozenset({"pprint"})


def _refused_filter(name: str) -> Callable[..., Any]:
    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise TemplateLimit(f"the {name} filter is not available in manifests")

    return refused


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    if name in _REFUSED_FILTERS:
        return _refused_filter(name)
    passes = getattr(func, "jinja_pass_arg", None) is not None

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        what = f"the {name} filter"
        values = args[1:] if passes else args
        _check_weight(what, (*values, *kwargs.values()))
        _check_numbers(what, (*values[1:], *kwargs.values()))
        if values:
            value = values[0]
            if name == "format" and isinstance(value, str):
                _check_printf(what, value)
            elif name == "replace" and len(values) >= 3:
                _check_replace(what, value, values[2])
            elif name == "join":
                _check_join(what, value, values[1] if len(values) > 1 else kwargs.get("d", ""))
            elif name == "tojson" and (len(values) > 1 or kwargs):
                # An indent is written before every item, at every depth, in json's Python encoder.
                raise TemplateLimit(f"{what} takes no indent in manifests (YAML reads one-line JSON)")
            elif name == "wordwrap" and isinstance(value, str):
                # The wrapstring goes in at every break, and there may be a break after each character.
                wrap = values[3] if len(values) > 3 else kwargs.get("wrapstring")
                if len(value) * (1 + _size(wrap)) > MAX_VALUE:
                    raise TemplateLimit(f"{what} could produce more than {MAX_VALUE:,} characters")
            elif name == "indent" and isinstance(value, str):
                width = values[1] if len(values) > 1 else kwargs.get("width", 4)
                width = len(width) if isinstance(width, str) else width
                if _is_int(width) and len(value) + width * (value.count("\n") + 1) > MAX_VALUE:
                    raise TemplateLimit(f"{what} would produce more than {MAX_VALUE:,} characters")
        return _check_result(what, func(*args, **kwargs))

    return bounded


def _bounded_test(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_numbers(f"the {name} test", (*args, *kwargs.values()))
        return func(*args, **kwargs)

    return bounded


class _BoundedCodeGenerator(jinja2.compiler.CodeGenerator):
    """Routes `~` (string concatenation) and list, tuple and mapping literals through the
    environment, which checks their size: nine nested literals of eight items hold 8**9 leaves."""

    def _bounded(self, visit: Callable[[Any, jinja2.compiler.Frame], None], node: Any,
                 frame: jinja2.compiler.Frame) -> None:
        self.write("environment.bounded_container(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: jinja2.nodes.List, frame: jinja2.compiler.Frame) -> None:
        self._bounded(super().visit_List, node, frame)

    def visit_Dict(self, node: jinja2.nodes.Dict, frame: jinja2.compiler.Frame) -> None:
        self._bounded(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: jinja2.nodes.Tuple, frame: jinja2.compiler.Frame) -> None:
        if node.ctx != "load":  # a target of for or set: names, not a value
            super().visit_Tuple(node, frame)
        else:
            self._bounded(super().visit_Tuple, node, frame)

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: jinja2.compiler.Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class ManifestSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """Jinja2 for manifests: strict undefined, no loader, no helper attributes, bounded work."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,  # YAML, not HTML
            loader=None,  # no include, import or extends can reach a file
            finalize=_printable,
        )
        for name in ("lipsum", "cycler", "joiner"):
            self.globals.pop(name, None)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        tests = self.tests.items()
        self.tests = {name: _bounded_test(name, cast(Callable[..., Any], f)) for name, f in tests}

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        # No attribute of any callable: env, range, dict, namespace, macros, methods. A loop
        # variable is callable (recursive loops) but its attributes are the loop's data.
        if callable(obj) and not isinstance(obj, jinja2.runtime.LoopContext):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if super().wrap_str_format(value) is None:
            return None

        def refused(*_args: Any, **_kwargs: Any) -> str:
            raise TemplateLimit("str.format is not available in manifests; use ~ or the format filter")

        return refused

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        what = f"the {operator} operator"
        _check_weight(what, (left, right))
        if operator == "*":
            for count, other in ((left, right), (right, left)):
                if _is_int(count) and _weight(other) * max(count, 0) > MAX_VALUE:
                    raise _too_big(what)
            if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise _too_many_bits(what)
        elif operator == "**":
            growing = _is_int(left) and _is_int(right) and abs(left) > 1
            if growing and right * left.bit_length() > MAX_INT_BITS:
                raise _too_many_bits(what)
        elif operator == "+":
            if _weight(left) + _weight(right) > MAX_VALUE:
                raise _too_big(what)
        elif operator == "%" and isinstance(left, str):
            _check_printf(what, left)
        return _check_result(what, super().call_binop(context, operator, left, right))

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_weight("a call", (*args, *kwargs.values()))
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            what = f"str.{name}"
            if name not in _STR_METHODS:
                raise TemplateLimit(f"{what} is not available in manifests")
            _check_numbers(what, (*args, *kwargs.values()))
            if name == "replace" and len(args) >= 2:
                _check_replace(what, owner, args[1])
            if name == "join" and args:
                _check_join(what, args[0], owner)
        return _check_result("a call", super().call(__context, __obj, *args, **kwargs))

    def bounded_concat(self, parts: Iterable[Any]) -> str:
        items = list(parts)
        if sum(_weight(x) for x in items) > MAX_VALUE:
            raise TemplateLimit(f"the ~ operator would produce more than {MAX_VALUE:,} characters")
        return _check_result("the ~ operator", jinja2.runtime.str_join(items))


    def concat(self, parts: Iterable[str]) -> str:
        """What a block ({% set %}...{% endset %}, a macro, caller(), {% filter %}) rendered, joined:
        its pieces are references (a loop printing one 1 MB string 1,500 times holds 1.5 GB of them),
        so they are counted before the one C call that would copy them all."""
        pieces = list(parts)
        if sum(len(p) for p in pieces) > MAX_VALUE:
            raise TemplateLimit(f"a block would render more than {MAX_VALUE:,} characters")
        return "".join(pieces)

    def bounded_container(self, value: T) -> T:
        """A list, tuple or mapping literal, refused when it holds more than the budget."""
        if _weight(value) > MAX_VALUE:
            what = "a list, tuple or mapping"
            raise TemplateLimit(f"{what} would hold more than {MAX_VALUE:,} characters or items")
        return value


def _printable(value: T) -> T:
    # Every {{ ... }} is made a string in one C call (a list's repr): weigh it first.
    if _weight(value) > MAX_VALUE:
        raise TemplateLimit(f"the value printed would produce more than {MAX_VALUE:,} characters or items")
    return value


def render_bounded(template: jinja2.Template, context: dict[str, Any]) -> str:
    """Render with the output budget: at most MAX_OUTPUT characters."""
    out: list[str] = []
    total = 0
    for piece in template.generate(context):
        total += len(piece)
        if total > MAX_OUTPUT:
            raise TemplateLimit(f"the file renders to more than {MAX_OUTPUT:,} characters")
        out.append(piece)
    return "".join(out)


def run_with_deadline(work: Callable[[], T], seconds: float | None = None) -> T:
    """`work()` in this thread, interrupted (TemplateTimeout) after `seconds` (RENDER_SECONDS).

    A watchdog thread raises an exception in this thread at the deadline, and again until this
    thread has left (see _Watchdog), so even an empty loop ends; every size-changing operation is
    bounded separately, so no single step runs long in C. When this returns or raises, no
    exception is pending for this thread and none will be posted.
    """
    limit = RENDER_SECONDS if seconds is None else seconds
    watchdog = _Watchdog(limit)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = quiet_hook = functools.partial(_unraisable, previous=previous_hook)
    try:
        try:
            watchdog.start()
            return work()
        finally:
            # First, and in one C call: Python delivers an asynchronous exception only at a call, a
            # function's start or a backward jump, never inside a C function, so none lands here
            # before the gate is ours, and from then on the watchdog posts nothing. One posted just
            # before lands right after this call (TemplateTimeout, below) or is cancelled next.
            watchdog.gate.acquire()
            watchdog.cancel_pending()
    except _Deadline:
        raise TemplateTimeout(f"rendering took longer than {limit:g} seconds") from None
    finally:
        watchdog.wake()
        if sys.unraisablehook is quiet_hook:
            sys.unraisablehook = previous_hook


#: Seconds between two posts of the deadline's exception once it is due: Python drops one raised in
#: a __del__, a gc or weakref callback, and the loop runs on. Tests lower it; nothing else may.
REPOST_SECONDS = 0.05

_SET_ASYNC_EXC = ctypes.pythonapi.PyThreadState_SetAsyncExc


class _Watchdog:
    """Posts _Deadline into the thread that made it, at the deadline and every REPOST_SECONDS
    after, until that thread has left the deadline.

    Python drops an exception raised where it cannot propagate (a __del__, a gc or weakref callback:
    it only reports it as "unraisable"), so one post may be lost; hence the re-posts. A post after
    the thread has left would land in unrelated code, so both sides respect one lock, the gate: the
    watchdog posts only while it holds the gate and never waits for it; the thread leaves by taking
    the gate for good, then cancels a post made just before and not yet delivered. After that
    nothing is pending and nothing more is posted.
    """

    def __init__(self, seconds: float) -> None:
        self._thread_id = ctypes.c_ulong(threading.get_ident())
        self._first = seconds
        self.gate = threading.Lock()
        self._woken = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._watch, name="render deadline", daemon=True).start()

    def wake(self) -> None:
        """Let the watchdog thread end now rather than at its next post."""
        self._woken.set()

    def post(self) -> bool:
        """Post _Deadline unless the thread has left (taken the gate); whether it was posted."""
        if not self.gate.acquire(blocking=False):
            return False
        try:
            _SET_ASYNC_EXC(self._thread_id, ctypes.py_object(_Deadline))
            return True
        finally:
            self.gate.release()

    def cancel_pending(self) -> None:
        _SET_ASYNC_EXC(self._thread_id, None)  # a NULL exception clears a pending one

    def _watch(self) -> None:
        wait = self._first
        while not self._woken.wait(wait) and self.post():
            wait = REPOST_SECONDS


def _unraisable(report: sys.UnraisableHookArgs, previous: Callable[[sys.UnraisableHookArgs], object]) -> None:
    # The deadline's exception, dropped where Python cannot raise it (and posted again): not news.
    if report.exc_type is not _Deadline:
        previous(report)
