// The Python module, fusedrnn._C: the modules' and cells' calls past the dispatcher, the
// layer node's Python backward, the build info and the switches (backends, CPU ISA, scratch
// pool, packed weights). It links fusedrnn's library (libfusedrnn.so), which holds the ops
// (ops.cpp) and everything they run.
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/python_cpp_function.h>
#include <torch/python.h>

#include "cpu/isa.h"
#include "layer/aoti_shims.h"
#include "layer/backend.h"
#include "layer/direct.h"
#include "layer/gemm.h"
#include "layer/packed_weights.h"
#include "layer/persistent.h"
#include "layer/scratch.h"
#include "layer/second_order.h"

// setup.py passes the torch version built against and the CUDA architectures, unquoted; spell
// them as strings.
#define FUSEDRNN_STR_(...) #__VA_ARGS__
#define FUSEDRNN_STR(...) FUSEDRNN_STR_(__VA_ARGS__)

namespace {

at::ScalarType dtype_named(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  return at::kInt;  // no backend has kernels for it
}

// For fusedrnn.backends: the backend a call of this shape would run on (None where a forced one
// refuses it), and every backend's refusal (None: it accepts).
using Refusals = std::vector<std::pair<std::string, std::optional<std::string>>>;
// gates, hidden, batch: 0 where not known.
std::pair<std::optional<std::string>, Refusals> backend_report(
    const std::string& device, const std::string& dtype, int64_t steps, bool projection,
    int64_t gates, int64_t hidden, int64_t batch, bool uniform) {
  const fusedrnn::CallShape call{c10::Device(device), dtype_named(dtype), steps, projection,
                                 gates, hidden, batch, uniform};
  const auto forced = fusedrnn::forced_backend();
  Refusals reasons;
  for (const fusedrnn::Backend backend : fusedrnn::all_backends())
    reasons.emplace_back(fusedrnn::name_of(backend),
                         fusedrnn::refusal(backend, call, forced == backend));
  std::optional<std::string> chosen;
  try {
    chosen = fusedrnn::name_of(fusedrnn::choose_backend(call).backend);
  } catch (const c10::Error&) {
  }
  return {chosen, reasons};
}

void force_backend(const std::string& name) {
  if (name.empty()) return fusedrnn::force_backend(std::nullopt);
  const auto backend = fusedrnn::backend_named(name);
  TORCH_CHECK(backend, "fusedrnn: unknown backend '", name, "'");
  fusedrnn::force_backend(backend);
}

void set_cpu_isa(const std::string& name) {
  if (name.empty()) return fusedrnn::cpu::set_isa(std::nullopt);
  const auto isa = fusedrnn::cpu::isa_named(name);
  TORCH_CHECK(isa, "fusedrnn: unknown CPU ISA '", name, "'");
  fusedrnn::cpu::set_isa(isa);
}

// Whether the backward running on this thread will use the gradient of `tensor`: false where
// the node its gradient flows to is outside the graph task or will not run (autograd.grad and
// backward(inputs=...) run only what leads to their inputs). torch._C._will_engine_execute_node
// asks the same, but raises (17 us) for a leaf whose gradient autograd.grad returns. Outside a
// backward, true.
bool engine_uses_gradient(const at::Tensor& tensor) {
  using torch::autograd::Node;
  const auto* exec_info = torch::autograd::get_current_graph_task_exec_info();
  const auto* in_graph = torch::autograd::get_current_graph_task_nodes_in_graph();
  if (!exec_info || !in_graph || !tensor.requires_grad()) return true;
  Node* node = torch::autograd::impl::gradient_edge(tensor).function.get();
  if (!node || !in_graph->count(node)) return false;
  if (exec_info->empty()) return true;  // a plain backward() runs the whole graph
  const auto it = exec_info->find(node);
  return it != exec_info->end() && it->second.should_execute();
}

// The layer node's backward where it runs in Python (layer/direct.h): `backward`, called with
// the GIL, gets the node as Python sees it (a grad_fn) and returns a gradient or None per input.
void set_python_layer_backward(py::function backward) {
  // Kept for the process's life, never released: the engine may call it from any thread, up
  // to the interpreter's exit.
  const auto* function = new py::function(std::move(backward));
  fusedrnn::set_python_layer_backward(
      [function](const char* cell, bool pair,
                 const c10::intrusive_ptr<torch::autograd::Node>& node,
                 const std::vector<at::Tensor>& saved, const std::vector<at::Tensor>& grads,
                 const std::vector<bool>& needed, const std::optional<at::Tensor>& batch_sizes) {
        py::gil_scoped_acquire gil;
        const auto node_object =
            py::reinterpret_steal<py::object>(torch::autograd::functionToPyObject(node));
        std::vector<at::Tensor> results;
        for (const py::handle g :
             (*function)(cell, pair, node_object, saved, grads, needed, batch_sizes))
          results.push_back(g.is_none() ? at::Tensor() : g.cast<at::Tensor>());
        return results;
      });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The modules' and cells' calls without a gradient, past the dispatcher (layer/direct.h).
  // Without the GIL, as the dispatcher's op calls run: other Python threads go on meanwhile.
  m.def("direct_module_forward", &fusedrnn::direct_module_forward,
        py::call_guard<py::gil_scoped_release>());
  m.def("direct_packed_forward", &fusedrnn::direct_packed_forward,
        py::call_guard<py::gil_scoped_release>());
  m.def("direct_cell_forward", &fusedrnn::direct_cell_forward,
        py::call_guard<py::gil_scoped_release>());
  m.def("direct_cell_step", &fusedrnn::direct_cell_step,
        py::call_guard<py::gil_scoped_release>());
  m.def("direct_layer_node", &fusedrnn::direct_layer_node,
        py::call_guard<py::gil_scoped_release>());
  m.def("direct_layer_pair_node", &fusedrnn::direct_layer_pair_node,
        py::call_guard<py::gil_scoped_release>());
  m.def("set_python_layer_backward", &set_python_layer_backward);
  // The double backward's loops over time (layer/second_order.h), internals of
  // fusedrnn/second_order.py.
  m.def("lstm_tangent_steps", &fusedrnn::lstm_tangent_steps,
        py::call_guard<py::gil_scoped_release>());
  m.def("lstm_backward_tangent_steps", &fusedrnn::lstm_backward_tangent_steps,
        py::call_guard<py::gil_scoped_release>());
  m.def("gru_tangent_steps", &fusedrnn::gru_tangent_steps,
        py::call_guard<py::gil_scoped_release>());
  m.def("gru_backward_tangent_steps", &fusedrnn::gru_backward_tangent_steps,
        py::call_guard<py::gil_scoped_release>());
  m.def("rnn_tangent_steps", &fusedrnn::rnn_tangent_steps,
        py::call_guard<py::gil_scoped_release>());
  m.def("rnn_backward_tangent_steps", &fusedrnn::rnn_backward_tangent_steps,
        py::call_guard<py::gil_scoped_release>());
  m.attr("torch_version") = FUSEDRNN_STR(FUSEDRNN_TORCH_VERSION);
#ifdef FUSEDRNN_CUDA_ARCHS
  m.attr("cuda_archs") = FUSEDRNN_STR(FUSEDRNN_CUDA_ARCHS);
#else
  m.attr("cuda_archs") = "";
#endif
  // Backends (layer/backend.h) and CPU instruction sets (cpu/isa.h).
  m.def("backend_names", [] {
    std::vector<std::string> names;
    for (const fusedrnn::Backend backend : fusedrnn::all_backends())
      names.emplace_back(fusedrnn::name_of(backend));
    return names;
  });
  m.def("backend_report", &backend_report);
  m.def("force_backend", &force_backend);
  m.def("forced_backend", [] {
    const auto backend = fusedrnn::forced_backend();
    return backend ? std::string(fusedrnn::name_of(*backend)) : std::string();
  });
  // The persistent backend's plan for a product on a device of the given limits, and its CPU
  // model (layer/persistent.h), for tests.
  m.def("persistent_plan", [](int64_t units, int64_t gates, int64_t K, int64_t batch,
                              int element_bytes, int sms, int64_t shared_per_block,
                              int64_t shared_per_sm, int64_t reserved_per_block,
                              bool cooperative) {
    const fusedrnn::persistent::Plan plan = fusedrnn::persistent::plan(
        {units, gates, K, batch, element_bytes},
        {sms, shared_per_block, shared_per_sm, reserved_per_block, cooperative});
    return py::dict(py::arg("refusal") = plan.refusal, py::arg("blocks") = plan.blocks,
                    py::arg("units_per_block") = plan.units_per_block,
                    py::arg("rows") = plan.rows, py::arg("k_padded") = plan.k_padded,
                    py::arg("batch_chunk") = plan.batch_chunk,
                    py::arg("shared_bytes") = plan.shared_bytes);
  });
  m.def("set_persistent_model", [](std::optional<std::vector<int64_t>> limits) {
    if (!limits) return fusedrnn::set_persistent_model(std::nullopt);
    TORCH_CHECK(limits->size() == 4, "limits: sms, shared_per_block, shared_per_sm, reserved");
    const auto& l = *limits;
    fusedrnn::set_persistent_model(fusedrnn::persistent::DeviceLimits{int(l[0]), l[1], l[2], l[3],
                                                                      true});
  });
  m.def("cpu_isa_detected", [] { return fusedrnn::cpu::name_of(fusedrnn::cpu::detected_isa()); });
  m.def("cpu_isa_active", [] { return fusedrnn::cpu::name_of(fusedrnn::cpu::active_isa()); });
  m.def("cpu_isas_runnable", [] {  // least to most capable, up to the detected one
    std::vector<std::string> names;
    for (int isa = 0; isa <= int(fusedrnn::cpu::detected_isa()); ++isa)
      names.push_back(fusedrnn::cpu::name_of(fusedrnn::cpu::Isa(isa)));
    return names;
  });
  m.def("set_cpu_isa", &set_cpu_isa);
  m.def("onednn_gemm_works", &fusedrnn::onednn_gemm_works);
  m.def("set_panel_sharing", &fusedrnn::cpu::set_panel_sharing);
  m.def("panels_taken_over", &fusedrnn::cpu::panels_taken_over);
  m.def("engine_uses_gradient", &engine_uses_gradient);
  // The pool of CPU temporaries kept between calls (scratch.h).
  m.def("scratch_held_bytes", &fusedrnn::scratch::held_bytes);
  m.def("scratch_limit_bytes", &fusedrnn::scratch::limit_bytes);
  m.def("set_scratch_limit_bytes", &fusedrnn::scratch::set_limit_bytes);
  // The fused product's packed weights kept between calls (packed_weights.h).
  m.def("packed_weights_stats", [] {
    const auto s = fusedrnn::packed_cache::stats();
    return std::map<std::string, int64_t>{{"held", s.held_bytes}, {"limit", s.limit_bytes},
                                          {"entries", s.entries}, {"hits", s.hits},
                                          {"misses", s.misses}};
  });
  m.def("set_packed_weights_limit_bytes", &fusedrnn::packed_cache::set_limit_bytes);
  // The forward ops' C entry points for AOTInductor (aoti_shims.h): (op, parameter list).
  m.def("aoti_shims", [] {
    std::vector<std::pair<std::string, std::string>> shims;
    for (const auto& shim : fusedrnn::aoti_shims()) shims.emplace_back(shim.op, shim.parameters);
    return shims;
  });
  m.def("empty_cache", [] {
    fusedrnn::scratch::empty_cache();
    fusedrnn::packed_cache::clear();
  });
#ifdef FUSEDRNN_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
