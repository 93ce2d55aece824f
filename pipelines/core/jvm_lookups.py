"""Remembered Py4J lookups of JVM classes and static methods, for the driver's Python process.

Why: every `pyspark.sql.functions` call, and most of PySpark's own helpers, reach the JVM
by name, as `sc._jvm.functions.col(...)`. Py4J answers each `.functions` and each `.col`
with a reflection round trip to the JVM before the call itself, so one `F.col` costs three
round trips (about 0.1 ms each on two busy cores). A silver micro-batch builds its plans
with thousands of them: 30 % of the time it spends building plans went to these two
lookups (bench/RESULTS.md, "Plan building and the JVM's lookups").

What a lookup returns cannot change while the JVM runs, when it names a class or a
static method: a loaded class stays loaded under its name, and a static method is called
by class and name at each call. So those two answers are kept, per gateway, view or class,
and name. Everything else is asked every time: a static field's value (it can change),
a package, a name that is not found (an import may add it later), and any lookup on an
object (an instance's members are not looked up by reflection).

`install()` is idempotent and is called by the session builder; `LAKEHOUSE_JVM_LOOKUP_CACHE=false`
leaves Py4J as it is. A Py4J without the expected classes is left alone too.
"""
from __future__ import annotations

import threading

from py4j import java_gateway as gw

from pipelines.core.settings import env_flag

_INSTALLED: dict[str, object] = {}
_LOCK = threading.Lock()


def enabled() -> bool:
    return env_flag("LAKEHOUSE_JVM_LOOKUP_CACHE", True)


def _remembering(lookup, scope: str, kept: tuple[type, ...], answers: dict):
    """Py4J's `lookup` (a `__getattr__`) that keeps the answers of the `kept` types in
    `answers`, by gateway client, the instance's `scope` attribute (a view's id, a class's
    name) and the name looked up.

    The client is named by id: every kept answer holds its client, so the id cannot be
    reused by another while the answer is kept. The key's parts are read from the
    instance's own attributes, so a missing one falls back to Py4J instead of coming back
    here."""

    def getattr_(self, name):
        own = self.__dict__
        if scope not in own or "_gateway_client" not in own:
            return lookup(self, name)
        key = (id(own["_gateway_client"]), own[scope], name)
        found = answers.get(key)
        if found is None:
            found = lookup(self, name)
            if isinstance(found, kept):
                answers[key] = found
        return found

    return getattr_


def install() -> bool:
    """Wrap Py4J's two name lookups with a cache of their stable answers; True when in place."""
    if not enabled() or not all(hasattr(gw, n) for n in ("JVMView", "JavaClass", "JavaMember")):
        return False
    with _LOCK:
        if _INSTALLED:
            return True
        view_lookup, class_lookup = gw.JVMView.__getattr__, gw.JavaClass.__getattr__
        classes: dict[tuple, object] = {}
        members: dict[tuple, object] = {}
        gw.JVMView.__getattr__ = _remembering(view_lookup, "_id", (gw.JavaClass,), classes)
        gw.JavaClass.__getattr__ = _remembering(class_lookup, "_fqn", (gw.JavaMember, gw.JavaClass), members)
        _INSTALLED.update(view=view_lookup, member=class_lookup, classes=classes, members=members)
    return True


def uninstall() -> None:
    """Py4J's own lookups again, and nothing remembered (tests)."""
    with _LOCK:
        if not _INSTALLED:
            return
        gw.JVMView.__getattr__ = _INSTALLED["view"]
        gw.JavaClass.__getattr__ = _INSTALLED["member"]
        _INSTALLED.clear()
