#include "train/distributed.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <numeric>
#include <unordered_set>

// The backends: Gloo's headers come from Debian's libgloo-dev (the pip wheels on the GPU machine
// lack them); ProcessGroupNCCL is there when this libtorch has CUDA and NCCL, which CMake and
// scripts/gpu_box_build.sh probe (CROSSMOE_HAVE_NCCL). With neither, this file builds without
// multi-process training and `train --nproc` says so.
#if defined(USE_C10D_GLOO) || defined(CROSSMOE_HAVE_NCCL)
#define CROSSMOE_HAVE_C10D 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef CROSSMOE_HAVE_NCCL
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/csrc/autograd/function.h>
#include <torch/version.h>  // TORCH_VERSION_MAJOR: which class the backends derive from
#include <torch/csrc/autograd/variable.h>

#include "model/tensor_names.hpp"
#include "train/torch_model.hpp"
#include "util/error.hpp"
#include "util/progress.hpp"

extern char** environ;

namespace crossmoe::train {

namespace {

constexpr const char* kRankVar = "CROSSMOE_RANK";
constexpr const char* kWorldVar = "CROSSMOE_WORLD_SIZE";
constexpr const char* kPortVar = "CROSSMOE_STORE_PORT";
constexpr int64_t kBucketBytes = 16 << 20;

int env_int(const char* name) {
  const char* value = std::getenv(name);
  require(value != nullptr, std::string("distributed: ") + name + " is not set");
  char* end = nullptr;
  const long v = std::strtol(value, &end, 10);
  require(*value != '\0' && *end == '\0' && v >= 0 && v < (1L << 20),
          std::string("distributed: ") + name + " must be a whole number, got '" + value + "'");
  return int(v);
}

// Why there is no process group for this device's tensors in this build.
std::string no_backend(const torch::Device& device) {
  return device.is_cuda() ? "distributed: this build of crossmoe has no NCCL backend (a libtorch with CUDA and NCCL), "
                            "so no --nproc with --device cuda"
                          : "distributed: this build of crossmoe has no Gloo backend (libgloo-dev), so no --nproc on the CPU";
}

// Adds the wall time of a scope to a counter.
class ScopeTimer {
 public:
  explicit ScopeTimer(double& total) : total_(total) {}
  ~ScopeTimer() { total_ += watch_.seconds(); }

 private:
  double& total_;
  Stopwatch watch_;
};

#ifdef CROSSMOE_HAVE_C10D  // the collectives' buckets: the c10d code below is their only user
// Consecutive runs of tensors of one type, each of `bucket_bytes` at most (a larger tensor is a
// bucket of its own), as lists of indices.
std::vector<std::vector<size_t>> bucket_indices(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes) {
  std::vector<std::vector<size_t>> buckets;
  int64_t bytes = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const torch::Tensor& t = tensors[i];
    if (buckets.empty() || bytes + int64_t(t.nbytes()) > bucket_bytes ||
        t.scalar_type() != tensors[buckets.back().front()].scalar_type()) {
      buckets.emplace_back();
      bytes = 0;
    }
    buckets.back().push_back(i);
    bytes += int64_t(t.nbytes());
  }
  return buckets;
}

// The same, as the tensors themselves, of about kBucketBytes.
std::vector<std::vector<torch::Tensor>> buckets_of(const std::vector<torch::Tensor>& tensors) {
  std::vector<std::vector<torch::Tensor>> buckets;
  for (const std::vector<size_t>& indices : bucket_indices(tensors, kBucketBytes)) {
    buckets.emplace_back();
    for (const size_t i : indices) buckets.back().push_back(tensors[i]);
  }
  return buckets;
}

// A bucket as one flat tensor, and back.
torch::Tensor flatten(const std::vector<torch::Tensor>& bucket) {
  std::vector<torch::Tensor> pieces;
  for (const torch::Tensor& t : bucket) pieces.push_back(t.reshape(-1));
  return torch::cat(pieces);
}
void unflatten(const torch::Tensor& flat, const std::vector<torch::Tensor>& bucket) {
  torch::NoGradGuard no_grad;
  int64_t offset = 0;
  for (const torch::Tensor& t : bucket) {
    const_cast<torch::Tensor&>(t).copy_(flat.narrow(0, offset, t.numel()).view_as(t));
    offset += t.numel();
  }
}

#endif

// This process's command line, as the kernel keeps it.
std::vector<std::string> own_arguments() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  for (size_t begin = 0; begin < all.size();) {
    const size_t end = all.find('\0', begin);
    args.push_back(all.substr(begin, end - begin));
    begin = end == std::string::npos ? all.size() : end + 1;
  }
  require(!args.empty(), "train --nproc: cannot read this process's command line");
  return args;
}

}  // namespace

#ifdef CROSSMOE_HAVE_C10D
// The class both backends derive from (libtorch 1.13, Debian's: ProcessGroup; 2.x: Backend).
#if TORCH_VERSION_MAJOR >= 2
using Backend = c10d::Backend;
#else
using Backend = c10d::ProcessGroup;
#endif

struct Communicator::Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<Backend> collectives;
  // The gradient buckets' reductions, launched from the backward pass: a group of their own, as
  // collectives of one group must be issued in the same order on every rank.
  c10::intrusive_ptr<Backend> gradients;

  // Both groups of `world` ranks that meet through `store`, of the backend for `device`.
  static std::unique_ptr<Group> over(c10::intrusive_ptr<c10d::Store> store, int rank, int world,
                                     const torch::Device& device) {
    auto group = std::make_unique<Group>();
    group->store = std::move(store);
    const auto gradients_store = c10::make_intrusive<c10d::PrefixStore>("gradients", group->store);
#ifdef CROSSMOE_HAVE_NCCL
    if (device.is_cuda()) {
      // NCCL works on the current GPU (and CUDA tensors made without an index land there).
      c10::impl::getDeviceGuardImpl(device.type())->setDevice(device);
      group->collectives = c10::make_intrusive<c10d::ProcessGroupNCCL>(group->store, rank, world);
      group->gradients = c10::make_intrusive<c10d::ProcessGroupNCCL>(gradients_store, rank, world);
      return group;
    }
#endif
#ifdef USE_C10D_GLOO
    if (device.is_cpu()) {
      auto options = c10d::ProcessGroupGloo::Options::create();
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      group->collectives = c10::make_intrusive<c10d::ProcessGroupGloo>(group->store, rank, world, options);
      group->gradients = c10::make_intrusive<c10d::ProcessGroupGloo>(gradients_store, rank, world, options);
      return group;
    }
#endif
    throw Error(no_backend(device));
  }
};
#else
struct Communicator::Group {};
#endif

Communicator::Communicator(int rank, int world, const torch::Device& device, std::unique_ptr<Group> group,
                           std::shared_ptr<double> communication_seconds)
    : rank_(rank), world_(world), device_(device), group_(std::move(group)),
      communication_seconds_(std::move(communication_seconds)) {}

Communicator::~Communicator() = default;

int free_loopback_port() {  // the kernel picks it
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  require(fd >= 0, "train --nproc: cannot open a socket for the rendezvous");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  close(fd);
  require(ok, "train --nproc: cannot find a free loopback port for the rendezvous");
  return ntohs(addr.sin_port);
}

bool launched_rank() { return std::getenv(kRankVar) != nullptr; }

std::unique_ptr<Communicator> Communicator::from_environment(const torch::Device& device) {
  if (!launched_rank()) return nullptr;
  const int rank = env_int(kRankVar), world = env_int(kWorldVar), port = env_int(kPortVar);
  return join(rank, world, port, rank_device(device, rank));
}

bool Communicator::available(const torch::Device& device) {
#ifdef CROSSMOE_HAVE_NCCL
  if (device.is_cuda()) return true;
#endif
#ifdef USE_C10D_GLOO
  if (device.is_cpu()) return true;
#endif
  (void)device;
  return false;
}

torch::Device Communicator::rank_device(const torch::Device& requested, int rank) {
  if (!requested.is_cuda() || requested.has_index()) return requested;
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(rank));
}

std::unique_ptr<Communicator> Communicator::join(int rank, int world, int port, const torch::Device& device) {
  require(world >= 1 && rank >= 0 && rank < world && port > 0 && port < 65536,
          "distributed: the rank must be below the world size and the port a TCP port");
#ifndef CROSSMOE_HAVE_C10D
  throw Error(no_backend(device));
#else
  require(available(device), no_backend(device));  // before the store, which the other ranks would wait on
  c10d::TCPStoreOptions store_options;
  store_options.port = uint16_t(port);
  store_options.isServer = rank == 0;
  store_options.numWorkers = world;
  store_options.waitWorkers = true;
  return std::unique_ptr<Communicator>(new Communicator(
      rank, world, device,
      Group::over(c10::make_intrusive<c10d::TCPStore>("127.0.0.1", store_options), rank, world, device),
      std::make_shared<double>(0.0)));
#endif
}

std::unique_ptr<Communicator> Communicator::subgroup(const std::vector<int>& members, const std::string& name) {
  const auto at = std::find(members.begin(), members.end(), rank_);
  require(at != members.end(), "distributed: a rank joins a group it is not a member of");
#ifndef CROSSMOE_HAVE_C10D
  (void)name;
  throw Error(no_backend(device_));
#else
  const int rank = int(at - members.begin()), world = int(members.size());
  return std::unique_ptr<Communicator>(new Communicator(
      rank, world, device_, Group::over(c10::make_intrusive<c10d::PrefixStore>(name, group_->store), rank, world, device_),
      communication_seconds_));
#endif
}

std::vector<int> Communicator::owners(const std::vector<torch::Tensor>& tensors) const {
  std::vector<size_t> largest_first(tensors.size());
  std::iota(largest_first.begin(), largest_first.end(), 0);
  std::stable_sort(largest_first.begin(), largest_first.end(),
                   [&](size_t a, size_t b) { return tensors[a].numel() > tensors[b].numel(); });
  std::vector<int64_t> load(static_cast<size_t>(world_), 0);
  std::vector<int> owner(tensors.size(), 0);
  for (const size_t i : largest_first) {
    const int r = int(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = r;
    load[size_t(r)] += tensors[i].numel();
  }
  return owner;
}

#ifdef CROSSMOE_HAVE_C10D
void Communicator::barrier() {
  ScopeTimer timer(*communication_seconds_);
  std::vector<torch::Tensor> one{torch::ones({1}, torch::TensorOptions().device(device_))};
  group_->collectives->allreduce(one)->wait();
  require(one[0].item<float>() == float(world_), "distributed: a barrier's count is not the rank count");
}

void Communicator::sum(std::vector<torch::Tensor>& tensors) {
  ScopeTimer timer(*communication_seconds_);
  for (torch::Tensor& t : tensors) {
    require(t.device() == device_ && t.is_contiguous(),
            "distributed: a collective's tensor must be contiguous and on " + device_.str() + ", got " + t.device().str());
    std::vector<torch::Tensor> one{t};
    group_->collectives->allreduce(one)->wait();
  }
}

void Communicator::broadcast_from_owners(const std::vector<torch::Tensor>& tensors, const std::vector<int>& owners) {
  require(owners.size() == tensors.size(), "distributed: one owner per tensor");
  ScopeTimer timer(*communication_seconds_);
  std::vector<std::vector<torch::Tensor>> flat;
  std::vector<std::vector<torch::Tensor>> buckets;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  for (int r = 0; r < world_; ++r) {
    std::vector<torch::Tensor> owned;
    for (size_t i = 0; i < tensors.size(); ++i)
      if (owners[i] == r) owned.push_back(tensors[i]);
    for (auto& bucket : buckets_of(owned)) {
      flat.push_back({flatten(bucket)});
      buckets.push_back(std::move(bucket));
      c10d::BroadcastOptions options;
      options.rootRank = r;
      works.push_back(group_->collectives->broadcast(flat.back(), options));
    }
  }
  for (size_t b = 0; b < buckets.size(); ++b) {
    works[b]->wait();
    unflatten(flat[b][0], buckets[b]);
  }
}
void Communicator::gather_to_leader(const std::vector<torch::Tensor>& tensors, const std::vector<int>& owners) {
  require(owners.size() == tensors.size(), "distributed: one owner per tensor");
  ScopeTimer timer(*communication_seconds_);
  for (int r = 1; r < world_; ++r) {
    if (rank_ != 0 && rank_ != r) continue;
    std::vector<torch::Tensor> owned;
    for (size_t i = 0; i < tensors.size(); ++i)
      if (owners[i] == r) owned.push_back(tensors[i]);
    int tag = 0;
    for (const std::vector<torch::Tensor>& bucket : buckets_of(owned)) {
      std::vector<torch::Tensor> flat{rank_ == 0 ? torch::empty({0}) : flatten(bucket)};
      if (rank_ == 0) {
        int64_t n = 0;
        for (const torch::Tensor& t : bucket) n += t.numel();
        flat[0] = torch::empty({n}, bucket.front().options());
        group_->collectives->recv(flat, r, tag++)->wait();
        unflatten(flat[0], bucket);
      } else {
        group_->collectives->send(flat, 0, tag++)->wait();
      }
    }
  }
}

torch::Tensor Communicator::all_to_all(const torch::Tensor& rows, const std::vector<int64_t>& send,
                                       const std::vector<int64_t>& recv) {
  require(int(send.size()) == world_ && int(recv.size()) == world_, "distributed: all_to_all needs a count per rank");
  ScopeTimer timer(*communication_seconds_);
  std::vector<int64_t> shape = rows.sizes().vec();
  shape[0] = std::accumulate(recv.begin(), recv.end(), int64_t(0));
  at::Tensor input = rows.contiguous(), output = torch::empty(shape, rows.options());
  std::vector<int64_t> output_counts = recv, input_counts = send;
  group_->collectives->alltoall_base(output, input, output_counts, input_counts)->wait();
  return output;
}

namespace {

// exchange_rows as an autograd function: forward sends rows out, backward sends their gradients
// back along the same routes. (The communicator's address travels as an integer: the context keeps
// IValues only.)
struct RowExchange : torch::autograd::Function<RowExchange> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& rows, int64_t comm,
                               const std::vector<int64_t>& send, const std::vector<int64_t>& recv) {
    ctx->saved_data["comm"] = comm;
    ctx->saved_data["send"] = send;
    ctx->saved_data["recv"] = recv;
    return reinterpret_cast<Communicator*>(comm)->all_to_all(rows, send, recv);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* comm = reinterpret_cast<Communicator*>(ctx->saved_data["comm"].toInt());
    const torch::Tensor back =
        comm->all_to_all(grads[0], ctx->saved_data["recv"].toIntVector(), ctx->saved_data["send"].toIntVector());
    return {back, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor Communicator::exchange_rows(const torch::Tensor& rows, const std::vector<int64_t>& send,
                                          const std::vector<int64_t>& recv) {
  return RowExchange::apply(rows, reinterpret_cast<int64_t>(this), send, recv);
}

namespace {

// The sum over the ranks of a tensor, as a new tensor.
torch::Tensor summed(Communicator& comm, const torch::Tensor& x) {
  std::vector<torch::Tensor> one{x.detach().contiguous().clone()};
  comm.sum(one);
  return one[0];
}

// Tensor parallelism's f (sum_forward false: identity, gradient summed) and g (sum_forward true:
// summed, gradient passed through).
struct SplitBoundary : torch::autograd::Function<SplitBoundary> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, int64_t comm,
                               bool sum_forward) {
    ctx->saved_data["comm"] = comm;
    ctx->saved_data["sum_forward"] = sum_forward;
    return sum_forward ? summed(*reinterpret_cast<Communicator*>(comm), x) : x;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* comm = reinterpret_cast<Communicator*>(ctx->saved_data["comm"].toInt());
    const torch::Tensor back = ctx->saved_data["sum_forward"].toBool() ? grads[0] : summed(*comm, grads[0]);
    return {back, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor Communicator::enter_split(const torch::Tensor& x) {
  return SplitBoundary::apply(x, reinterpret_cast<int64_t>(this), false);
}
torch::Tensor Communicator::reduce_split(const torch::Tensor& x) {
  return SplitBoundary::apply(x, reinterpret_cast<int64_t>(this), true);
}

struct GradientReducer::State {
  struct Bucket {
    std::vector<size_t> members;      // parameter indices
    std::vector<int64_t> offsets;     // where each member's gradient starts in flat
    int64_t presence_at = 0;          // flat[presence_at + j]: 1 where member j has a gradient here
    std::vector<torch::Tensor> flat;  // one tensor: the gradients, then the presence counts
    c10::intrusive_ptr<c10d::Work> work;
    size_t pending = 0;               // members not yet ready this step
  };
  Communicator& comm;
  std::vector<torch::Tensor> params;  // reverse model order
  std::vector<unsigned> hooks;
  std::vector<Bucket> buckets;
  std::vector<size_t> bucket_of, slot_of;
  std::vector<char> ready;
  bool armed = false;
  size_t next_launch = 0;  // buckets launch in index order, on every rank alike

  explicit State(Communicator& c) : comm(c) {}

  // Parameter i's gradient is final: the one accumulated so far plus `incoming` (what the backward
  // pass is about to add; undefined when it adds nothing) goes into its bucket.
  void take(size_t i, const torch::Tensor& incoming) {
    require(!ready[i], "distributed: a parameter's gradient arrived twice in one backward pass");
    ready[i] = 1;
    torch::NoGradGuard no_grad;
    Bucket& b = buckets[bucket_of[i]];
    const size_t j = slot_of[i];
    const torch::Tensor& so_far = params[i].grad();
    torch::Tensor slot = b.flat[0].narrow(0, b.offsets[j], params[i].numel()).view_as(params[i]);
    if (so_far.defined()) slot.copy_(so_far);
    if (incoming.defined()) so_far.defined() ? slot.add_(incoming) : slot.copy_(incoming);
    if (!so_far.defined() && !incoming.defined()) slot.zero_();
    b.flat[0].narrow(0, b.presence_at + int64_t(j), 1).fill_(so_far.defined() || incoming.defined() ? 1 : 0);
    --b.pending;
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0) {
      buckets[next_launch].work = comm.group_->gradients->allreduce(buckets[next_launch].flat);
      ++next_launch;
    }
  }
};

GradientReducer::GradientReducer(Communicator& comm, TorchModel& model, const std::vector<std::string>& names,
                                 int64_t bucket_bytes)
    : state_(std::make_unique<State>(comm)) {
  State& s = *state_;
  // Reverse model order: the gradients of the last layers are final first.
  std::vector<std::string> order;
  const std::unordered_set<std::string> wanted(names.begin(), names.end());
  for (const TensorSpec& spec : expected_tensors(model.config()))
    if (wanted.count(spec.name)) order.push_back(spec.name);
  require(order.size() == names.size(), "distributed: a trained tensor is not in the model description");
  std::reverse(order.begin(), order.end());
  for (const std::string& name : order) s.params.push_back(model.tensor(name));
  s.bucket_of.resize(s.params.size());
  s.slot_of.resize(s.params.size());
  s.ready.assign(s.params.size(), 1);
  for (const std::vector<size_t>& members : bucket_indices(s.params, bucket_bytes)) {
    State::Bucket b;
    b.members = members;
    for (const size_t i : members) {
      s.bucket_of[i] = s.buckets.size();
      s.slot_of[i] = b.offsets.size();
      b.offsets.push_back(b.presence_at);
      b.presence_at += s.params[i].numel();
    }
    const torch::Tensor& first = s.params[members.front()];
    b.flat = {torch::zeros({b.presence_at + int64_t(members.size())}, first.options().requires_grad(false))};
    s.buckets.push_back(std::move(b));
  }
  State* state = state_.get();
  for (size_t i = 0; i < s.params.size(); ++i)
    s.hooks.push_back(s.params[i].register_hook([state, i](const torch::Tensor& grad) {
      if (state->armed) state->take(i, grad);
    }));
}

GradientReducer::~GradientReducer() {
  for (size_t i = 0; i < state_->params.size(); ++i) state_->params[i].remove_hook(state_->hooks[i]);
}

int GradientReducer::buckets() const { return int(state_->buckets.size()); }

void GradientReducer::prepare(const torch::Tensor& root) {
  State& s = *state_;
  require(!s.armed, "distributed: GradientReducer::prepare twice without finish");
  s.armed = true;
  s.next_launch = 0;
  std::fill(s.ready.begin(), s.ready.end(), 0);
  for (State::Bucket& b : s.buckets) b.pending = b.members.size();
  // The parameters this backward pass reaches: the graph's AccumulateGrad nodes (as DDP's
  // find_unused_parameters). The others are final already.
  std::unordered_set<const torch::autograd::Node*> reached;
  std::vector<torch::autograd::Node*> todo;
  if (root.grad_fn()) todo.push_back(root.grad_fn().get());
  while (!todo.empty()) {
    torch::autograd::Node* node = todo.back();
    todo.pop_back();
    if (!reached.insert(node).second) continue;
    for (const torch::autograd::Edge& edge : node->next_edges())
      if (edge.function && !reached.count(edge.function.get())) todo.push_back(edge.function.get());
  }
  for (size_t i = 0; i < s.params.size(); ++i) {
    const std::shared_ptr<torch::autograd::Node> accumulate = torch::autograd::impl::try_get_grad_accumulator(s.params[i]);
    if (!accumulate || !reached.count(accumulate.get())) s.take(i, torch::Tensor());
  }
}

int GradientReducer::finish() {
  State& s = *state_;
  require(s.armed, "distributed: GradientReducer::finish without prepare");
  int late = 0;
  for (size_t i = 0; i < s.params.size(); ++i) {
    if (s.ready[i]) continue;
    const size_t launched = s.next_launch;
    s.take(i, torch::Tensor());  // its hook did not run: the gradient is whole in .grad by now
    late += int(s.next_launch - launched);
  }
  s.armed = false;
  ScopeTimer timer(*s.comm.communication_seconds_);
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> presence;
  for (State::Bucket& b : s.buckets) {
    b.work->wait();
    b.work.reset();
    b.flat[0].div_(s.comm.world());
    presence.push_back(b.flat[0].narrow(0, b.presence_at, int64_t(b.members.size())));
  }
  // Which gradients some rank has: one copy to the host for all buckets (the step's one wait here).
  const torch::Tensor present = torch::cat(presence).to(torch::kCPU, torch::kDouble);
  const double* is_present = present.data_ptr<double>();
  for (State::Bucket& b : s.buckets) {
    const torch::Tensor& flat = b.flat[0];
    for (size_t j = 0; j < b.members.size(); ++j, ++is_present) {
      torch::Tensor& p = s.params[b.members[j]];
      if (*is_present == 0) {
        p.mutable_grad() = torch::Tensor();  // no rank has one
        continue;
      }
      const torch::Tensor mean = flat.narrow(0, b.offsets[j], p.numel()).view_as(p);
      if (p.grad().defined()) p.mutable_grad().copy_(mean);
      else p.mutable_grad() = mean.clone();
    }
  }
  return late;
}
#else
// Never called: without a c10d backend no Communicator is made (join throws).
void Communicator::barrier() {}
void Communicator::sum(std::vector<torch::Tensor>&) {}
void Communicator::broadcast_from_owners(const std::vector<torch::Tensor>&, const std::vector<int>&) {}
void Communicator::gather_to_leader(const std::vector<torch::Tensor>&, const std::vector<int>&) {}
torch::Tensor Communicator::all_to_all(const torch::Tensor& rows, const std::vector<int64_t>&, const std::vector<int64_t>&) {
  return rows;
}
torch::Tensor Communicator::exchange_rows(const torch::Tensor& rows, const std::vector<int64_t>&,
                                          const std::vector<int64_t>&) {
  return rows;
}
torch::Tensor Communicator::enter_split(const torch::Tensor& x) { return x; }
torch::Tensor Communicator::reduce_split(const torch::Tensor& x) { return x; }
struct GradientReducer::State {};
GradientReducer::GradientReducer(Communicator&, TorchModel&, const std::vector<std::string>&, int64_t) {}
GradientReducer::~GradientReducer() = default;
int GradientReducer::buckets() const { return 0; }
void GradientReducer::prepare(const torch::Tensor&) {}
int GradientReducer::finish() { return 0; }
#endif

LaunchResult launch_ranks(int nproc) {
  require(nproc >= 1, "train --nproc: needs at least one process");
  const std::vector<std::string> args = own_arguments();
  const int port = free_loopback_port();
  // Everything exec needs is built before forking (the child only calls execve).
  std::vector<std::vector<std::string>> envs(static_cast<size_t>(nproc));
  std::vector<std::vector<char*>> envps(static_cast<size_t>(nproc));
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (int r = 0; r < nproc; ++r) {
    for (char** e = environ; *e; ++e) envs[size_t(r)].push_back(*e);
    envs[size_t(r)].push_back(std::string(kRankVar) + "=" + std::to_string(r));
    envs[size_t(r)].push_back(std::string(kWorldVar) + "=" + std::to_string(nproc));
    envs[size_t(r)].push_back(std::string(kPortVar) + "=" + std::to_string(port));
    for (std::string& e : envs[size_t(r)]) envps[size_t(r)].push_back(e.data());
    envps[size_t(r)].push_back(nullptr);
  }
  std::vector<pid_t> pids(static_cast<size_t>(nproc), -1);
  for (int r = 0; r < nproc; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      execve("/proc/self/exe", argv.data(), envps[size_t(r)].data());
      _exit(127);
    }
    if (pid < 0) {
      for (const pid_t p : pids)
        if (p > 0) kill(p, SIGTERM);
      throw Error("train --nproc: cannot start rank " + std::to_string(r));
    }
    pids[size_t(r)] = pid;
  }
  LaunchResult result;
  for (int running = nproc; running > 0;) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) break;
    int rank = -1;
    for (int r = 0; r < nproc; ++r)
      if (pids[size_t(r)] == pid) rank = r;
    if (rank < 0) continue;
    pids[size_t(rank)] = -1;
    --running;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok && result.failed_rank < 0) {
      // The first failure: its error is already on stderr; the others would wait for it forever.
      result.failed_rank = rank;
      result.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      for (const pid_t p : pids)
        if (p > 0) kill(p, SIGTERM);
    }
  }
  return result;
}

}  // namespace crossmoe::train
