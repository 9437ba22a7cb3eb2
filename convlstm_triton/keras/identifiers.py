"""Keras identifiers of objects (a name, Keras' serialized dict, a Keras object, a callable)
resolved to this library's objects: one resolver for regularizers and constraints.

Keras' serialized form is ``{"class_name": ..., "config": {...}}`` plus "module",
"registered_name" (Keras 3's serialization) and "shared_object_id" (Keras 3's config.json, for
objects several layers share), which are ignored; any other key is an error.
"""

KERAS_DICT_KEYS = frozenset({"class_name", "config", "module", "registered_name",
                             "shared_object_id"})


def resolve(identifier, argument, kind, *, names, keras_classes, own_type, from_class, forms,
            plain_dict=None):
    """``identifier`` -> an object of ``own_type``, a user's callable, or None.

    ``names``: name -> factory; ``keras_classes``: Keras class names whose objects are rebuilt
    through ``get_config()`` (Keras is never imported); ``from_class(class_name, config,
    argument, identifier)`` builds from a class name and config; ``plain_dict(identifier,
    argument)``: another dict form, or None. Errors name ``argument`` and list ``forms``."""
    if identifier is None:
        return None
    if isinstance(identifier, str):
        make = names.get(identifier)
        if make is None:
            raise ValueError(f"{argument}={identifier!r} is not a known {kind}; accepted: {forms}")
        return make()
    if isinstance(identifier, dict):
        if "class_name" in identifier:
            extra = set(identifier) - KERAS_DICT_KEYS
            if extra:
                raise ValueError(f"{argument}={identifier!r}: unexpected keys {sorted(extra)}; "
                                 f"accepted: {forms}")
            return from_class(identifier["class_name"], identifier.get("config", {}), argument,
                              identifier)
        made = plain_dict(identifier, argument) if plain_dict is not None else None
        if made is None:
            raise ValueError(f"{argument}={identifier!r} is not a {kind}; accepted: {forms}")
        return made
    if isinstance(identifier, own_type):
        return identifier
    # a Keras object: rebuilt from its config (with any Keras backend)
    class_name = type(identifier).__name__
    if class_name in keras_classes and hasattr(identifier, "get_config"):
        return from_class(class_name, dict(identifier.get_config()), argument, identifier)
    if callable(identifier):
        return identifier
    raise ValueError(f"{argument}={identifier!r} (type {type(identifier).__name__}) is not a "
                     f"{kind}; accepted: {forms}")
