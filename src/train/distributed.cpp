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

// Gloo's headers come from Debian's libgloo-dev; a libtorch without them (the pip wheels on the GPU
// machine) builds without data parallelism, and a launched rank says so.
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

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

// Adds the wall time of a scope to a counter.
class ScopeTimer {
 public:
  explicit ScopeTimer(double& total) : total_(total) {}
  ~ScopeTimer() { total_ += watch_.seconds(); }

 private:
  double& total_;
  Stopwatch watch_;
};

// Consecutive runs of tensors of one type, each of about kBucketBytes at most (a larger tensor is a
// bucket of its own).
std::vector<std::vector<torch::Tensor>> buckets_of(const std::vector<torch::Tensor>& tensors) {
  std::vector<std::vector<torch::Tensor>> buckets;
  int64_t bytes = 0;
  for (const torch::Tensor& t : tensors) {
    if (buckets.empty() || bytes + int64_t(t.nbytes()) > kBucketBytes ||
        t.scalar_type() != buckets.back().front().scalar_type()) {
      buckets.emplace_back();
      bytes = 0;
    }
    buckets.back().push_back(t);
    bytes += int64_t(t.nbytes());
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

// A loopback port that is free now, for rank 0's store (the kernel picks it).
int free_port() {
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

#ifdef USE_C10D_GLOO
struct Communicator::Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
};
#else
struct Communicator::Group {};
#endif

Communicator::Communicator(int rank, int world, std::unique_ptr<Group> group)
    : rank_(rank), world_(world), group_(std::move(group)) {}

Communicator::~Communicator() = default;

bool launched_rank() { return std::getenv(kRankVar) != nullptr; }

std::unique_ptr<Communicator> Communicator::from_environment() {
  if (!launched_rank()) return nullptr;
  const int rank = env_int(kRankVar), world = env_int(kWorldVar), port = env_int(kPortVar);
  require(world >= 1 && rank < world && port > 0 && port < 65536,
          "distributed: the rank must be below the world size and the port a TCP port");
#ifndef USE_C10D_GLOO
  throw Error("distributed: this build of crossmoe has no Gloo backend (libgloo-dev), so no --nproc");
#else
  auto group = std::make_unique<Group>();
  c10d::TCPStoreOptions store_options;
  store_options.port = uint16_t(port);
  store_options.isServer = rank == 0;
  store_options.numWorkers = world;
  store_options.waitWorkers = true;
  group->store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", store_options);
  auto options = c10d::ProcessGroupGloo::Options::create();
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  group->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(group->store, rank, world, options);
  return std::unique_ptr<Communicator>(new Communicator(rank, world, std::move(group)));
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

#ifdef USE_C10D_GLOO
void Communicator::barrier() {
  ScopeTimer timer(communication_seconds_);
  group_->gloo->barrier()->wait();
}

void Communicator::sum(std::vector<torch::Tensor>& tensors) {
  ScopeTimer timer(communication_seconds_);
  for (torch::Tensor& t : tensors) {
    std::vector<torch::Tensor> one{t};
    group_->gloo->allreduce(one)->wait();
  }
}

void Communicator::average_gradients(TorchModel& model, const std::vector<std::string>& names) {
  // Which gradients exist on some rank: those are reduced (zero where missing), the rest stay unset.
  torch::Tensor present = torch::zeros({int64_t(names.size())}, torch::kInt64);
  for (size_t i = 0; i < names.size(); ++i) present[int64_t(i)] = int64_t(model.tensor(names[i]).grad().defined());
  std::vector<torch::Tensor> flags{present};
  sum(flags);
  ScopeTimer timer(communication_seconds_);
  std::vector<torch::Tensor> grads;
  for (size_t i = 0; i < names.size(); ++i) {
    if (present[int64_t(i)].item<int64_t>() == 0) continue;
    torch::Tensor& p = model.tensor(names[i]);
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    grads.push_back(p.grad());
  }
  const std::vector<std::vector<torch::Tensor>> buckets = buckets_of(grads);
  std::vector<std::vector<torch::Tensor>> flat(buckets.size());
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  for (size_t b = 0; b < buckets.size(); ++b) {
    flat[b] = {flatten(buckets[b])};
    works.push_back(group_->gloo->allreduce(flat[b]));
  }
  for (size_t b = 0; b < buckets.size(); ++b) {
    works[b]->wait();
    unflatten(flat[b][0].div_(world_), buckets[b]);
  }
}

void Communicator::broadcast_from_owners(const std::vector<torch::Tensor>& tensors, const std::vector<int>& owners) {
  require(owners.size() == tensors.size(), "distributed: one owner per tensor");
  ScopeTimer timer(communication_seconds_);
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
      works.push_back(group_->gloo->broadcast(flat.back(), options));
    }
  }
  for (size_t b = 0; b < buckets.size(); ++b) {
    works[b]->wait();
    unflatten(flat[b][0], buckets[b]);
  }
}
#else
// Never called: without Gloo no Communicator is made (from_environment throws).
void Communicator::barrier() {}
void Communicator::sum(std::vector<torch::Tensor>&) {}
void Communicator::average_gradients(TorchModel&, const std::vector<std::string>&) {}
void Communicator::broadcast_from_owners(const std::vector<torch::Tensor>&, const std::vector<int>&) {}
#endif

LaunchResult launch_ranks(int nproc) {
  require(nproc >= 1, "train --nproc: needs at least one process");
  const std::vector<std::string> args = own_arguments();
  const int port = free_port();
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
