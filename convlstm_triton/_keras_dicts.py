"""Keras' serialized form of an object, ``{"class_name": ..., "config": {...}}``: the keys that
initializers, regularizers and constraints accept (the rest of a dict is an error)."""

# "module" and "registered_name": Keras 3's serialization; "shared_object_id": Keras 3's
# config.json, for objects that several layers may share. All but the first two are ignored.
KERAS_DICT_KEYS = frozenset({"class_name", "config", "module", "registered_name",
                             "shared_object_id"})
