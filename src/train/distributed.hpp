#pragma once
// Training on several processes of one host, through libtorch's distributed backend (c10d): a
// TCPStore on loopback for the rendezvous and Gloo for the collectives (CPU tensors; the CI runs
// it with 2 processes). `crossmoe train --nproc N` starts the ranks with launch_ranks; each rank
// finds its place from the environment the launcher sets, as torchrun's workers do.
//
// Data parallelism: every rank holds the whole model and optimizer, takes its slice of each global
// batch, and after the backward pass the gradients are averaged across ranks, so all ranks take
// the same optimizer step and stay identical (rank 0 alone writes logs and checkpoints).
// With the optimizer state sharded (ZeRO-1), each rank keeps the AdamW moments of its share of the
// parameters and updates only those; every parameter is then sent from its owner to the others.
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace crossmoe::train {

class TorchModel;

class Communicator {
 public:
  // This process's rank in a run that launch_ranks started (CROSSMOE_RANK, CROSSMOE_WORLD_SIZE,
  // CROSSMOE_STORE_PORT), joined to the others; nullptr when the process was not launched so.
  static std::unique_ptr<Communicator> from_environment();
  ~Communicator();

  int rank() const { return rank_; }
  int world() const { return world_; }

  // Returns when every rank has called it.
  void barrier();
  // Sums each tensor across ranks, in place.
  void sum(std::vector<torch::Tensor>& tensors);
  // Averages the gradients of `names` across ranks, flattened into buckets of about 16 MiB whose
  // reductions run concurrently. A gradient that some rank lacks (an expert that got no tokens
  // there) counts as zero there; one that no rank has stays undefined, as on a single process.
  void average_gradients(TorchModel& model, const std::vector<std::string>& names);
  // ZeRO-1's split: the rank that owns each tensor, balancing elements (largest first, to the rank
  // with the fewest so far). A pure function of the shapes and the world size: every rank agrees.
  std::vector<int> owners(const std::vector<torch::Tensor>& tensors) const;
  // Copies every tensor from its owner to the other ranks, in place (buckets of about 16 MiB per
  // owner, broadcast concurrently).
  void broadcast_from_owners(const std::vector<torch::Tensor>& tensors, const std::vector<int>& owners);
  // Wall seconds this process has spent in collectives (waiting for the others included).
  double communication_seconds() const { return communication_seconds_; }

 private:
  struct Group;
  Communicator(int rank, int world, std::unique_ptr<Group> group);
  int rank_, world_;
  std::unique_ptr<Group> group_;
  double communication_seconds_ = 0;
};

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
