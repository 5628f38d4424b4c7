"""fusedrnn.convert and fusedrnn.revert: swap the recurrent modules of a model between torch.nn's
and fusedrnn's, keeping their Parameter objects."""
import copy as copying
import warnings

from torch import nn

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
    a deep copy and leaves `module` as it was. Only those exact classes are replaced: a subclass
    (whose methods may call torch.nn's forward) stays, with a warning naming it and the class to
    derive it from instead; so do modules whose parameters are not torch.nn's own (weight norm).
    Hooks registered on a replaced module are not carried over."""
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
        if type(module) in table:
            new = _counterpart(module, table[type(module)], path or "the root module")
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


def _warn_subclass(module, path, table):
    base = next(cls for cls in type(module).__mro__ if cls in table)
    library, other = ("torch.nn", "fusedrnn") if base in _TO_FUSED else ("fusedrnn", "torch.nn")
    warnings.warn(
        f"fusedrnn: left {path} ({type(module).__module__}.{type(module).__qualname__}) as it is: "
        f"it subclasses {library}.{base.__name__}, whose forward its methods may call; derive it "
        f"from {other}.{table[base].__name__} instead to run it on {other}")


def _counterpart(module, target_cls, path):
    """A target_cls module holding module's parameters, or module itself (with a warning) where
    that would not compute the same thing."""
    library = "torch.nn" if type(module) in _TO_FUSED else "fusedrnn"
    described = f"{path} ({library}.{type(module).__name__})"
    with warnings.catch_warnings():  # torch.nn warned about these arguments when they were given
        warnings.simplefilter("ignore")
        new = target_cls(**_constructor_arguments(module), device="meta")
    own = dict(module.named_parameters(recurse=False))
    if (set(own) != {name for name, _ in new.named_parameters()}
            or next(module.buffers(recurse=False), None) is not None):
        warnings.warn(f"fusedrnn: left {described} as it is: it has parameters or buffers other "
                      "than torch.nn's own (weight norm?), which the replacement would not use")
        return module
    for name, parameter in own.items():
        setattr(new, name, parameter)
    if isinstance(new, nn.RNNBase):
        new._init_flat_weights()  # refreshes the flat weight list and its references
    return new.train(module.training)


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
