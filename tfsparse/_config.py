"""Helpers shared by tfsparse's configurable objects (schedules, regularizers)."""


def config_repr(obj) -> str:
    """`ClassName(key=value, ...)` from `obj.get_config()`, so a repr reads like the call that made it."""
    args = ", ".join(f"{key}={value!r}" for key, value in obj.get_config().items())
    return f"{type(obj).__name__}({args})"
