#pragma once
// Training on several processes of one host, through libtorch's distributed backend (c10d): a
// TCPStore on loopback for the rendezvous, and the collectives of the training device's backend:
// Gloo for CPU tensors (the CI runs it with 2 processes), NCCL for CUDA tensors (one GPU per rank).
// Every collective takes tensors on that device; the code is the same for both backends, which
// Communicator::join picks from the device. `crossmoe train --nproc N` starts the ranks with
// launch_ranks; each rank finds its place from the environment the launcher sets, as torchrun's
// workers do.
//
// Data parallelism: every rank holds the whole model and optimizer, takes its slice of each global
// batch, and after the backward pass the gradients are averaged across ranks, so all ranks take
// the same optimizer step and stay identical (rank 0 alone writes logs and checkpoints).
// With the optimizer state sharded (ZeRO-1), each rank keeps the AdamW moments of its share of the
// parameters and updates only those; every parameter is then sent from its owner to the others.
//
// Tensor parallelism (--tp T) splits every rank's model across groups of T consecutive ranks
// (torch_model.hpp's TensorParallel); data parallelism then runs across the groups: the ranks that
// hold the same slices (rank i, i + T, ...) average their gradients. Each kind of group is a
// Communicator of its own (subgroup), a process group over the same TCPStore under its own prefix.
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace crossmoe::train {

class TorchModel;

class Communicator {
 public:
  // This process's rank in a run that launch_ranks started (CROSSMOE_RANK, CROSSMOE_WORLD_SIZE,
  // CROSSMOE_STORE_PORT), joined to the others, training on `device` (rank_device); nullptr when
  // the process was not launched so.
  static std::unique_ptr<Communicator> from_environment(const torch::Device& device);
  // Rank `rank` of `world`, joined through the TCPStore that rank 0 hosts on this loopback port
  // (what from_environment does with the launcher's variables; tests run ranks as threads with it).
  // The collectives run on `device`: Gloo on the CPU, NCCL on a GPU (made the current one).
  static std::unique_ptr<Communicator> join(int rank, int world, int port, const torch::Device& device = torch::kCPU);
  // Whether this build has the backend for this kind of device (Gloo: c10d's Gloo headers; NCCL: a
  // libtorch with CUDA whose ProcessGroupNCCL compiled and linked at configure time). Without it,
  // join and from_environment throw.
  static bool available(const torch::Device& device);
  // The device a launched rank trains on when `requested` was asked for: the CPU, the GPU given
  // (cuda:N), or for plain `cuda` GPU number `rank` (one GPU per rank, as torchrun's local ranks).
  static torch::Device rank_device(const torch::Device& requested, int rank);
  ~Communicator();
  // A group of some of the ranks (`members`, in their new rank order, this rank among them) over
  // this one's store; `name` tells the group apart (every member passes the same one). Every member
  // must call it, at the same point.
  std::unique_ptr<Communicator> subgroup(const std::vector<int>& members, const std::string& name);

  int rank() const { return rank_; }
  int world() const { return world_; }
  // Where the tensors of every collective must be (and where the trainer puts the model).
  const torch::Device& device() const { return device_; }

  // Returns when every rank has called it: an all-reduce of one number on the device, read back on
  // the host (NCCL's own barrier has to guess a device, and a Work's wait orders only the streams).
  void barrier();
  // Sums each tensor across ranks, in place (contiguous tensors on device()).
  void sum(std::vector<torch::Tensor>& tensors);
  // ZeRO-1's split: the rank that owns each tensor, balancing elements (largest first, to the rank
  // with the fewest so far). A pure function of the shapes and the world size: every rank agrees.
  std::vector<int> owners(const std::vector<torch::Tensor>& tensors) const;
  // Copies every tensor from its owner to the other ranks, in place (buckets of about 16 MiB per
  // owner, broadcast concurrently).
  void broadcast_from_owners(const std::vector<torch::Tensor>& tensors, const std::vector<int>& owners);
  // Rank 0 receives every tensor from its owner (`tensors` on rank 0 must hold buffers of the right
  // shapes); the owners send theirs; the rest is left alone. For checkpoints of split experts.
  void gather_to_leader(const std::vector<torch::Tensor>& tensors, const std::vector<int>& owners);
  // All-to-all of rows: rows [n, d] ordered by destination, send[r] of them for rank r; returns the
  // rows received, recv[s] from rank s, in rank order. exchange_rows is the same as an autograd
  // function, whose gradient is the all-to-all back (expert parallelism's dispatch and return).
  torch::Tensor all_to_all(const torch::Tensor& rows, const std::vector<int64_t>& send, const std::vector<int64_t>& recv);
  torch::Tensor exchange_rows(const torch::Tensor& rows, const std::vector<int64_t>& send, const std::vector<int64_t>& recv);
  // Tensor parallelism's two operators as autograd functions (TensorParallel's enter and reduce):
  // enter_split is the identity whose backward pass sums the gradient over the ranks; reduce_split
  // sums over the ranks and passes the gradient through.
  torch::Tensor enter_split(const torch::Tensor& x);
  torch::Tensor reduce_split(const torch::Tensor& x);
  // Wall seconds this process has spent blocked in collectives (waiting for the others included;
  // reductions running behind the backward pass count only for the time the step then waits on them).
  // On NCCL the host only queues the collectives on the GPU: the time is then that of queueing and of
  // the host reads that wait for them (the loss, the counts of expert parallelism). One count for a
  // communicator and every subgroup made from it: tensor and expert parallelism's collectives run on
  // subgroups, and a rank's time in them is its time communicating all the same.
  double communication_seconds() const { return *communication_seconds_; }

 private:
  friend class GradientReducer;
  struct Group;
  Communicator(int rank, int world, const torch::Device& device, std::unique_ptr<Group> group,
               std::shared_ptr<double> communication_seconds);
  int rank_, world_;
  torch::Device device_;
  std::unique_ptr<Group> group_;
  std::shared_ptr<double> communication_seconds_;  // shared with the subgroups
};

// Averages gradients across the ranks while the backward pass runs, as PyTorch's DDP does: the
// parameters, in reverse model order (about the order in which their gradients become final), are
// cut into buckets of about `bucket_bytes`; a hook on each parameter copies its gradient into its
// bucket's flat buffer, and once a bucket is full it is all-reduced asynchronously, bucket after
// bucket in the same order on every rank. Parameters that the step's graph does not reach (experts
// that got no tokens on this rank) are ready from the start. The reductions run on a process group
// of their own, so that the other collectives (the balancing loss's sums in the forward pass)
// never interleave with them.
// A gradient that some rank lacks counts as zero there; one that no rank has stays undefined, as on
// a single process (each bucket carries a presence count per parameter for that).
class GradientReducer {
 public:
  GradientReducer(Communicator& comm, TorchModel& model, const std::vector<std::string>& names, int64_t bucket_bytes);
  ~GradientReducer();  // removes the hooks
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Before the backward pass of a step's last micro-batch (`root` is the tensor it starts from):
  // the hooks take the gradients from then on (earlier micro-batches only accumulate).
  void prepare(const torch::Tensor& root);
  // After that backward pass: launches what the hooks did not, waits for every bucket and writes
  // each parameter's gradient as the mean over ranks. Returns how many buckets were launched here,
  // after the backward pass rather than during it (0 when the overlap works as meant).
  int finish();
  int buckets() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// A loopback TCP port that is free now (for a rendezvous).
int free_loopback_port();

// Whether this process is a rank that launch_ranks started.
bool launched_rank();

// Runs this program again (its own command line) as `nproc` rank processes on this host and waits
// for them. When one fails, the others are stopped; returns the failing rank and its exit status
// (its own error is on stderr), or rank -1 when all succeeded.
struct LaunchResult {
  int failed_rank = -1;
  int status = 0;  // exit code, or 128 + signal
};
LaunchResult launch_ranks(int nproc);

}  // namespace crossmoe::train
