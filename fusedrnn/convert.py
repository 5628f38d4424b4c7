"""fusedrnn.convert and fusedrnn.revert: swap the recurrent modules of a model between torch.nn's
and fusedrnn's, keeping their Parameter objects."""
import copy as copying
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import cells, modules

_TO_FUSED = {
    nn.LSTM: modules.LSTM, nn.GRU: modules.GRU, nn.RNN: modules.RNN,
    nn.LSTMCell: cells.LSTMCell, nn.GRUCell: cells.GRUCell, nn.RNNCell: cells.RNNCell,
}
_TO_TORCH = {fused: torch_nn for torch_nn, fused in _TO_FUSED.items()}


def convert(module, copy=False):
    """Replaces every torch.nn LSTM, GRU, RNN, LSTMCell, GRUCell and RNNCell in the module tree
    (the root included) with its fusedrnn equivalent, and returns the root: use the return value,
    as the root itself may be one of them.

    The replacements hold the same Parameter objects, so device, dtype, requires_grad and any
    optimizer that already holds them carry over, and keep the training mode. copy=True converts
    a deep copy and leaves `module` as it was. Only those exact classes are replaced, and those
    with parametrizations (torch.nn.utils.parametrize: parametrizations.weight_norm,
    spectral_norm, orthogonal), which carry over as they are. A subclass (whose methods may call
    torch.nn's forward) stays, with a warning naming it and the class to derive it from instead;
    so do modules whose weights are computed other than by a parametrization or a hook. Extra
    parameters and buffers, and hooks (torch.nn.utils.prune's and the hook-based weight_norm's
    among them), carry over: the same objects, so a hook's handle still removes it."""
    return _replace_tree(copying.deepcopy(module) if copy else module, _TO_FUSED)


def revert(module, copy=False):
    """The reverse of convert: fusedrnn's modules and cells back to torch.nn's, with the same
    Parameter objects (copies with copy=True)."""
    return _replace_tree(copying.deepcopy(module) if copy else module, _TO_TORCH)


def _replace_tree(root, table):
    replaced = {}  # old module -> its replacement, so that a module used twice stays shared

    def visit(module, path):
        if module in replaced:
            return replaced[module]
        new = module
        cls = _class_of(module)
        if cls in table:
            new = _counterpart(module, table[cls], path or "the root module")
        elif table is _TO_FUSED and isinstance(module, tuple(_TO_TORCH)):
            pass  # fusedrnn's already (its cells are torch.nn cells too), or a subclass of them
        elif isinstance(module, tuple(table)):
            _warn_subclass(module, path or "the root module", table)
        else:
            for name, child in list(module._modules.items()):
                if child is not None:
                    new_child = visit(child, f"{path}.{name}" if path else name)
                    if new_child is not child:
                        setattr(module, name, new_child)
        replaced[module] = new
        return new

    return visit(root, "")


def _class_of(module):
    """The module's class, before any parametrization replaced it with a subclass of it."""
    return parametrize.type_before_parametrizations(module)


def _warn_subclass(module, path, table):
    cls = _class_of(module)
    base = next(c for c in cls.__mro__ if c in table)
    library, other = ("torch.nn", "fusedrnn") if base in _TO_FUSED else ("fusedrnn", "torch.nn")
    warnings.warn(
        f"fusedrnn: left {path} ({cls.__module__}.{cls.__qualname__}) as it is: "
        f"it subclasses {library}.{base.__name__}, whose forward its methods may call; derive it "
        f"from {other}.{table[base].__name__} instead to run it on {other}")


# The attributes holding a module's hooks (forward, backward, state_dict, load_state_dict).
_HOOK_ATTRIBUTES = tuple(name for name in vars(nn.Module()) if "hook" in name)


def _counterpart(module, target_cls, path):
    """A target_cls module holding module's parameters, buffers, parametrizations and hooks, or
    module itself (with a warning) where that would not compute the same thing."""
    cls = _class_of(module)
    described = f"{path} ({'torch.nn' if cls in _TO_FUSED else 'fusedrnn'}.{cls.__name__})"
    with warnings.catch_warnings():  # torch.nn warned about these arguments when they were given
        warnings.simplefilter("ignore")
        new = target_cls(**_constructor_arguments(module), device="meta")
    weights = [name for name, _ in new.named_parameters()]  # torch.nn's own
    own = dict(module.named_parameters(recurse=False))
    parametrized = dict(module.parametrizations) if parametrize.is_parametrized(module) else {}
    # Weights a hook sets before each call from parameters of other names (torch.nn.utils.prune,
    # the hook-based torch.nn.utils.weight_norm): the last ones it set, as plain attributes.
    computed = {name: module.__dict__[name] for name in weights
                if isinstance(module.__dict__.get(name), torch.Tensor)}
    if (any(name not in own and name not in parametrized and name not in computed
            for name in weights)
            or set(module._modules) != ({"parametrizations"} if parametrized else set())):
        warnings.warn(f"fusedrnn: left {described} as it is: some of its weights are neither "
                      "parameters, parametrizations nor tensors set by a hook, or it has "
                      "submodules, which the replacement would not use")
        return module
    for name in computed:  # as plain attributes, not parameters
        del new._parameters[name]
    for name, parameter in own.items():
        setattr(new, name, parameter)
    for name, tensor in computed.items():
        setattr(new, name, tensor)
    for name, buffer in module._buffers.items():
        new.register_buffer(name, buffer, persistent=name not in module._non_persistent_buffers_set)
    for name in _HOOK_ATTRIBUTES:  # the same dicts: handles the user holds still remove them
        setattr(new, name, getattr(module, name))
    for name, parametrization in parametrized.items():
        _share_parametrization(new, name, parametrization)
    if isinstance(new, nn.RNNBase) and parametrized:
        # The flat weight list and its references as module holds them, so that the next call
        # refreshes them as module's own would have: refreshing here would evaluate the
        # parametrizations, and spectral_norm steps its power iteration at each evaluation.
        new._flat_weights = list(module._flat_weights)
        new._flat_weight_refs = list(module._flat_weight_refs)
    elif isinstance(new, nn.RNNBase):
        new._init_flat_weights()  # refreshes the flat weight list and its references
    return new.train(module.training)


def _share_parametrization(module, name, parametrization):
    """Puts `parametrization` (a ParametrizationList, with the original tensors it holds) on
    module's `name`, through torch's own registration: an identity registered first (on the
    placeholder weight, no evaluation of the real one), then swapped for the shared list."""
    parametrize.register_parametrization(module, name, nn.Identity(), unsafe=True)
    module.parametrizations[name] = parametrization


def _constructor_arguments(module):
    arguments = {"input_size": module.input_size, "hidden_size": module.hidden_size,
                 "bias": module.bias}
    if isinstance(module, nn.RNNBase):
        arguments.update(num_layers=module.num_layers, batch_first=module.batch_first,
                         dropout=module.dropout, bidirectional=module.bidirectional)
    if getattr(module, "proj_size", 0) > 0:
        arguments["proj_size"] = module.proj_size
    if hasattr(module, "nonlinearity"):
        arguments["nonlinearity"] = module.nonlinearity
    return arguments
