"""Read a ConvLSTM layer's weights from a saved Keras file by layer name (h5py only, no Keras).

``load_keras_layer_weights(path, layer_name)`` returns ``[kernel, recurrent_kernel, bias]`` (no
bias for ``use_bias=False``) as numpy arrays, the order and shapes of ``keras_layer.get_weights()``;
``layer.load_keras_weights(path, layer_name)`` on a ``ConvLSTM1D/2D/3D`` loads them.
Needs ``h5py`` (``pip install convlstm-triton[keras-files]``).

Accepted files (layouts verified against files written by Keras 3.15):

* ``.keras`` (``model.save("m.keras")``): a zip holding ``config.json``, ``metadata.json`` and
  ``model.weights.h5``; the weights are read from the latter (sharded weights are not supported).
* ``.weights.h5`` (``model.save_weights("m.weights.h5")``): that same HDF5 file on its own.

  In both, every layer is an HDF5 group named by the snake-cased **class** name and its position
  (``layers/conv_lstm2d``, ``layers/conv_lstm2d_1``, nested models as
  ``layers/sequential/layers/conv_lstm2d``), not by the layer's name. A ConvLSTM layer's weights
  are the datasets ``<group>/cell/vars/0, 1, 2`` = kernel, recurrent kernel, bias. Keras >= ~3.10
  stores the layer's name as the ``name`` attribute of ``<group>/vars``; that is how a layer is
  found. Files without it (older Keras 3): a ``.keras`` file's ``config.json`` is used to rebuild
  the group paths from the layer order (Keras' naming rule), checked against the layer's
  ``filters`` / ``kernel_size`` / ``use_bias``; for a bare ``.weights.h5`` pass the group path
  instead of the name (e.g. ``"conv_lstm2d_1"`` or ``"sequential/conv_lstm2d"``). A group path is
  accepted in place of the name for any file.
* Legacy HDF5 (``model.save("m.h5")`` in Keras 3, Keras 2 / tf.keras ``.h5`` models and weights):
  the top-level layer group ``<layer_name>`` lists its datasets in the ``weight_names`` attribute
  (``enc/conv_lstm_cell/kernel``; Keras 2: ``.../kernel:0``); nested models are not searched.

bfloat16 weights (stored by Keras as 2-byte opaque data tagged ``dtype="bfloat16"``) are returned
as float32. Errors: ``FileNotFoundError`` for a missing file; ``ValueError`` for a file that is not
one of the above, or for an unknown / non-ConvLSTM layer name (the message lists the ConvLSTM
layers the file holds).
"""

import json
import os
import re
import zipfile
import zlib

import numpy as np

__all__ = ["load_keras_layer_weights", "load_keras_layer_config", "list_convlstm_layers"]

_WEIGHTS_MEMBER = "model.weights.h5"
_SUPPORTED = (
    "a Keras 3 '.keras' file (a zip with model.weights.h5), a '.weights.h5' file, or a legacy "
    "Keras HDF5 '.h5' model/weights file"
)


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading Keras files needs h5py: pip install h5py "
            "(or pip install 'convlstm-triton[keras-files]')"
        ) from e
    return h5py


def _to_snake_case(name):
    # keras.src.utils.naming.to_snake_case
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _read(dataset):
    value = np.asarray(dataset[()])
    tag = dataset.attrs.get("dtype")
    if isinstance(tag, bytes):
        tag = tag.decode()
    if tag == "bfloat16" or (value.dtype.kind == "V" and value.dtype.itemsize == 2):
        bits = np.frombuffer(value.tobytes(), dtype=np.uint16).astype(np.uint32) << 16
        value = bits.view(np.float32).reshape(value.shape)
    return np.array(value)  # a copy that outlives the file


def _attr_str(attrs, key):
    value = attrs.get(key)
    if isinstance(value, bytes):
        value = value.decode()
    return value if isinstance(value, str) else None


# --------------------------------------------------------------------------- Keras 3 layout


class _Entry:
    """One saved layer of a Keras 3 weights file."""

    def __init__(self, path, name, cell_vars, damage=None):
        self.path = path  # "layers/conv_lstm2d_1"
        self.name = name  # "dec", or None (older files)
        self.cell_vars = cell_vars  # the h5 group <path>/cell/vars, or None
        self.damage = damage  # what is wrong with a ConvLSTM's cell/vars, or None

    @property
    def short_path(self):  # "conv_lstm2d_1", "sequential/conv_lstm2d"
        return "/".join(p for p in self.path.split("/") if p != "layers")

    def weights(self):
        keys = sorted(self.cell_vars.keys(), key=int)
        return [_read(self.cell_vars[k]) for k in keys]

    def describe(self):
        return f"{self.name!r} ({self.short_path})" if self.name else repr(self.short_path)


def _is_convlstm_vars(group, h5py):
    if group is None:
        return False
    keys = list(group.keys())
    if sorted(keys) not in (["0", "1"], ["0", "1", "2"]):
        return False
    if not all(isinstance(group[k], h5py.Dataset) for k in keys):
        return False
    k, r = group["0"].shape, group["1"].shape
    ok = len(k) >= 3 and len(k) == len(r) and k[:-2] == r[:-2] and k[-1] == r[-1] == 4 * r[-2]
    if "2" in keys:
        ok = ok and group["2"].shape == (k[-1],)
    return ok


def _convlstm_damage(group, h5py):
    """What is wrong with a ``cell/vars`` group that holds a ConvLSTM's kernel (a dataset "0" of
    rank >= 3, or the numbered datasets of a ConvLSTM with one gone) but not a readable set of
    ConvLSTM weights; None where it is fine or is another layer's."""
    if group is None or _is_convlstm_vars(group, h5py):
        return None
    keys = sorted(group.keys())
    kernel = group.get("0")
    looks = (isinstance(kernel, h5py.Dataset) and len(kernel.shape) >= 3) or (
        kernel is None and any(isinstance(group.get(k), h5py.Dataset)
                               and len(group[k].shape) >= 3 for k in ("1", "2")))
    if not looks:
        return None
    missing = [k for k in ("0", "1") if not isinstance(group.get(k), h5py.Dataset)]
    if missing:
        return (f"cell/vars holds {keys}: the {' and '.join(missing)} dataset(s) (kernel, "
                "recurrent kernel) are missing")
    return (f"cell/vars holds {keys} with shapes "
            f"{[tuple(group[k].shape) for k in keys if isinstance(group.get(k), h5py.Dataset)]}"
            ", which are not a ConvLSTM's kernel, recurrent kernel and bias")


def _keras3_entries(h5, h5py):
    """Every layer group under ``layers/`` (recursing into nested models' ``layers/``)."""
    entries = []

    def visit(layers_group, prefix):
        for key in layers_group.keys():
            child = layers_group.get(key)
            if not isinstance(child, h5py.Group):
                continue
            path = f"{prefix}/{key}"
            vars_group = child.get("vars")
            name = _attr_str(vars_group.attrs, "name") if vars_group is not None else None
            cell = child.get("cell")
            cell_vars = cell.get("vars") if isinstance(cell, h5py.Group) else None
            damage = _convlstm_damage(cell_vars, h5py)
            if not _is_convlstm_vars(cell_vars, h5py):
                cell_vars = None
            entries.append(_Entry(path, name, cell_vars, damage))
            nested = child.get("layers")
            if isinstance(nested, h5py.Group):
                visit(nested, f"{path}/layers")

    layers = h5.get("layers")
    if isinstance(layers, h5py.Group):
        visit(layers, "layers")
    return entries


def _config_paths(config):
    """Keras' weight-file group path of every layer of a model config:
    {name: (path, config, class_name)}.

    Mirrors ``saving_lib._save_container_state``: within a model's ``layers`` list each layer is
    named ``to_snake_case(class_name)`` with ``_1``, ``_2`` ... for repeats; a Sequential model
    omits its InputLayer.
    """
    out = {}

    def walk(model_cfg, prefix):
        cfg = model_cfg.get("config") or {}
        layers = cfg.get("layers")
        if not isinstance(layers, list):
            return
        sequential = model_cfg.get("class_name") == "Sequential"
        used = {}
        for layer in layers:
            if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str):
                continue
            if sequential and layer["class_name"] == "InputLayer":
                continue
            base = _to_snake_case(layer["class_name"])
            if base in used:
                used[base] += 1
                base = f"{base}_{used[base]}"
            else:
                used[base] = 0
            path = f"{prefix}layers/{base}"
            name = (layer.get("config") or {}).get("name") or layer.get("name")
            if isinstance(name, str):
                out.setdefault(name, (path, layer.get("config") or {}, layer["class_name"]))
            walk(layer, path + "/")

    if isinstance(config, dict):
        walk(config, "")
    return out


def _consistent(layer_cfg, weights):
    """Whether the weights match the layer config's filters / kernel_size / use_bias."""
    kernel = weights[0]
    filters = layer_cfg.get("filters")
    kernel_size = layer_cfg.get("kernel_size")
    use_bias = layer_cfg.get("use_bias", True)
    if isinstance(kernel_size, int):
        kernel_size = [kernel_size] * (kernel.ndim - 2)
    return (
        (filters is None or kernel.shape[-1] == 4 * filters)
        and (kernel_size is None or list(kernel.shape[:-2]) == list(kernel_size))
        and (len(weights) == 3) == bool(use_bias)
    )


def _find_keras3(h5, h5py, layer_name, config, source):
    entries = _keras3_entries(h5, h5py)
    stored_names = any(e.name for e in entries)
    layer_configs = {}
    if not stored_names and config is not None:
        # Older Keras 3 file without layer names in the HDF5: rebuild them from config.json.
        by_path = {path: (name, cfg) for name, (path, cfg, _) in _config_paths(config).items()}
        for e in entries:
            e.name, layer_configs[e.path] = by_path.get(e.path, (None, None))
    named = [e for e in entries if e.name == layer_name]
    if not named:
        key = layer_name.strip("/")
        named = [e for e in entries if key in (e.path, e.short_path)]
    if len(named) > 1:
        raise ValueError(
            f"{source}: {len(named)} layers are named {layer_name!r} (in nested models): "
            f"{[e.short_path for e in named]}; pass the group path instead of the name"
        )
    convlstm = ", ".join(e.describe() for e in entries if e.cell_vars is not None) or "none"
    if not named:
        raise ValueError(
            f"{source} has no layer {layer_name!r}; ConvLSTM layers in this file: {convlstm}"
            + ("" if any(e.name for e in entries) else
               " (this file stores no layer names: pass a group path as listed)")
        )
    entry = named[0]
    if entry.damage is not None:
        raise ValueError(f"{source}: layer {entry.describe()} is a damaged ConvLSTM layer: "
                         f"{entry.damage}")
    if entry.cell_vars is None:
        raise ValueError(
            f"{source}: layer {entry.describe()} is not a ConvLSTM layer (no cell/vars with a "
            f"kernel, recurrent kernel and bias); ConvLSTM layers in this file: {convlstm}"
        )
    weights = entry.weights()
    layer_cfg = layer_configs.get(entry.path)
    if layer_cfg is not None and not _consistent(layer_cfg, weights):
        raise ValueError(
            f"{source}: layer {layer_name!r} of config.json maps to {entry.short_path!r}, whose "
            f"weights {[w.shape for w in weights]} do not match its config "
            "(filters / kernel_size / use_bias); pass the group path instead"
        )
    return weights


# --------------------------------------------------------------------------- legacy HDF5


def _legacy_root(h5):
    if "model_weights" in h5:
        return h5["model_weights"]
    if "layer_names" in h5.attrs:
        return h5
    return None


def _legacy_role(weight_name):
    base = weight_name.split("/")[-1].split(":")[0]
    return {"kernel": 0, "recurrent_kernel": 1, "bias": 2}.get(base)


def _decode_names(values):
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _find_legacy(root, h5py, layer_name, source):
    layer_names = _decode_names(root.attrs.get("layer_names", []))

    def convlstm_weights(name):
        group = root.get(name)
        if not isinstance(group, h5py.Group):
            return None
        weight_names = _decode_names(group.attrs.get("weight_names", []))
        roles = [_legacy_role(w) for w in weight_names]
        if sorted(r for r in roles if r is not None) not in ([0, 1], [0, 1, 2]) or None in roles:
            return None
        weights = [None] * len(roles)
        for role, wname in zip(roles, weight_names):
            ds = group.get(wname)
            if not isinstance(ds, h5py.Dataset):
                raise ValueError(f"{source}: layer {name!r} is damaged: its weight {wname!r} "
                                 "(listed in weight_names) is missing from the file")
            weights[role] = _read(ds)
        k, r = weights[0].shape, weights[1].shape
        if len(k) < 3 or k[:-2] != r[:-2] or k[-1] != r[-1] or k[-1] != 4 * r[-2]:
            return None
        return weights

    def readable(name):  # for the list of alternatives: damaged layers count as none
        try:
            return convlstm_weights(name) is not None
        except ValueError:
            return False

    available = ", ".join(repr(n) for n in layer_names if readable(n))
    if layer_name not in layer_names:
        raise ValueError(
            f"{source} has no layer {layer_name!r}; ConvLSTM layers in this file: "
            f"{available or 'none'}"
        )
    weights = convlstm_weights(layer_name)
    if weights is None:
        raise ValueError(
            f"{source}: layer {layer_name!r} is not a ConvLSTM layer (its weights are not a "
            f"kernel, recurrent_kernel and bias); ConvLSTM layers in this file: "
            f"{available or 'none'}"
        )
    return weights


# --------------------------------------------------------------------------- entry points


_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# what a damaged zip member raises while it is read (CRC, deflate stream, early end)
_ZIP_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError)


def _magic(path):
    with open(path, "rb") as f:
        return f.read(8)


def _open(path, h5py):
    """(h5 file, config.json dict or None, description, handles to close after the h5 file)."""
    head = _magic(path)
    if head.startswith(_ZIP_MAGIC) and not zipfile.is_zipfile(path):
        raise ValueError(f"{path!r} is a truncated or corrupt .keras (zip) archive: it starts "
                         "as a zip file but has no readable central directory (an interrupted "
                         "write or copy?)")
    if zipfile.is_zipfile(path):
        try:
            return _open_archive(path, h5py)
        except _ZIP_DAMAGE as e:
            raise ValueError(f"{path!r} is a corrupt .keras (zip) archive ({type(e).__name__}: "
                             f"{e})") from None
    try:
        h5 = h5py.File(path, "r")
    except OSError as e:
        if head == _HDF5_MAGIC:
            raise ValueError(f"{path!r} is an HDF5 file that cannot be read: truncated or "
                             f"corrupt ({e})") from None
        raise ValueError(
            f"{path!r} is neither a zip nor an HDF5 file; expected {_SUPPORTED}"
        ) from None
    return h5, None, f"{path!r}", ()


def _open_archive(path, h5py):
    """``_open`` of a zip: its weights member as an h5 file, its config.json (a damaged
    member's error comes out as ``_ZIP_DAMAGE``)."""
    archive = zipfile.ZipFile(path)
    try:
        names = archive.namelist()
        if _WEIGHTS_MEMBER not in names:
            sharded = any(n.endswith(".weights.json") for n in names)
            raise ValueError(
                f"{path!r} is a zip file without {_WEIGHTS_MEMBER} (members: {names[:10]}); "
                + ("sharded Keras weights are not supported; " if sharded else "")
                + f"expected {_SUPPORTED}"
            )
        config = None
        if "config.json" in names:
            try:
                config = json.loads(archive.read("config.json"))
            except ValueError:
                config = None
        member = archive.open(_WEIGHTS_MEMBER)  # stored uncompressed by Keras: cheap to seek
    except BaseException:
        archive.close()
        raise
    try:
        h5 = h5py.File(member, "r")
    except (OSError, *_ZIP_DAMAGE) as e:
        member.close()
        archive.close()
        raise ValueError(f"{path!r}: its {_WEIGHTS_MEMBER} is not a readable HDF5 file "
                         f"(corrupt or truncated: {type(e).__name__}: {e})") from None
    return h5, config, f"{path!r}", (member, archive)


def _with_file(path, fn):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such Keras file: {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory; expected {_SUPPORTED}")
    h5py = _h5py()
    h5, config, source, extra = _open(path, h5py)
    try:
        return fn(h5, h5py, config, source)
    except _ZIP_DAMAGE as e:  # the weights member, read as the h5 file is walked
        raise ValueError(f"{source}: its {_WEIGHTS_MEMBER} is damaged in the archive "
                         f"({type(e).__name__}: {e})") from None
    except (KeyError, OSError) as e:  # h5py: a group or dataset that cannot be read
        raise ValueError(f"{source}: an HDF5 object cannot be read, the file is damaged "
                         f"({type(e).__name__}: {e})") from None
    finally:
        h5.close()
        for handle in extra:
            handle.close()


def load_keras_layer_weights(path, layer_name):
    """``[kernel, recurrent_kernel, bias]`` of ConvLSTM layer ``layer_name`` in a Keras file.

    ``path``: a ``.keras`` file, a ``.weights.h5`` file or a legacy Keras ``.h5`` file (see the
    module docstring); ``layer_name``: the Keras layer's ``name`` (or, for Keras 3 files, its
    group path such as ``"conv_lstm2d_1"``). Returns numpy arrays in Keras ``get_weights()`` order
    and shapes (two arrays for a layer built with ``use_bias=False``).
    """
    if not isinstance(layer_name, str) or not layer_name:
        raise TypeError(f"layer_name must be a non-empty string, got {layer_name!r}")

    def find(h5, h5py, config, source):
        legacy = _legacy_root(h5)
        if "layers" not in h5 and legacy is not None:
            return _find_legacy(legacy, h5py, layer_name, source)
        if "layers" not in h5 and "vars" not in h5:
            raise ValueError(
                f"{source} is an HDF5 file but not a Keras weights file (no 'layers' group, no "
                f"legacy 'layer_names'); expected {_SUPPORTED}"
            )
        return _find_keras3(h5, h5py, layer_name, config, source)

    return _with_file(path, find)


def list_convlstm_layers(path):
    """Names (or group paths, where the file stores no names) of the ConvLSTM layers in a file."""

    def listing(h5, h5py, config, source):
        legacy = _legacy_root(h5)
        if "layers" not in h5 and legacy is not None:
            out = []
            for name in _decode_names(legacy.attrs.get("layer_names", [])):
                try:
                    _find_legacy(legacy, h5py, name, source)
                except ValueError as e:
                    if "is damaged" in str(e):
                        raise  # a broken layer is an error, not a layer to leave out
                    continue
                out.append(name)
            return out
        entries = _keras3_entries(h5, h5py)
        if config is not None and not any(e.name for e in entries):
            by_path = {path: name for name, (path, _, _) in _config_paths(config).items()}
            for e in entries:
                e.name = by_path.get(e.path)
        damaged = [f"{e.describe()}: {e.damage}" for e in entries if e.damage is not None]
        if damaged:
            raise ValueError(f"{source} has damaged ConvLSTM layers: {'; '.join(damaged)}")
        return [e.name or e.short_path for e in entries if e.cell_vars is not None]

    return _with_file(path, listing)


def load_keras_layer_config(path, layer_name):
    """``(class_name, config)`` of layer ``layer_name`` as the file's model config has it (a
    ``.keras`` file's ``config.json``, a legacy ``.h5`` model's ``model_config`` attribute), or
    None for a file that holds no model config (a ``.weights.h5`` file, legacy weights-only
    ``.h5``) or no layer of that name in it. ``layer_name``: the layer's name, or for Keras 3
    files its group path (as for ``load_keras_layer_weights``). ``config``: the layer's Keras
    config dict (``filters``, ``kernel_size``, ``activation``...), as Keras serialized it."""
    if not isinstance(layer_name, str) or not layer_name:
        raise TypeError(f"layer_name must be a non-empty string, got {layer_name!r}")

    def find(h5, h5py, config, source):
        if config is None:
            raw = h5.attrs.get("model_config")
            if isinstance(raw, bytes):
                raw = raw.decode()
            if isinstance(raw, str):
                try:
                    config = json.loads(raw)
                except ValueError:
                    config = None
        if not isinstance(config, dict):
            return None
        layers = _config_paths(config)
        if layer_name in layers:
            _, layer_config, class_name = layers[layer_name]
            return class_name, layer_config
        key = layer_name.strip("/")
        for path, layer_config, class_name in layers.values():
            short = "/".join(p for p in path.split("/") if p != "layers")
            if key in (path, short):
                return class_name, layer_config
        return None

    return _with_file(path, find)
