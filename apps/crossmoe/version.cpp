#include "version.hpp"

#include "kernels/kernels.hpp"

// git_commit.h is written at every build by apps/crossmoe/git_commit.cmake (and by
// scripts/gpu_box_build.sh); a build from a source tree without git has none.
#if __has_include("git_commit.h")
#include "git_commit.h"
#else
#define CROSSMOE_GIT_COMMIT ""
#endif
#ifdef CROSSMOE_HAVE_TORCH
#include <torch/version.h>

#include "train/distributed.hpp"
#endif

namespace crossmoe::cli {

std::string version_text() {
  using kernels::Isa;
  const std::string commit = CROSSMOE_GIT_COMMIT;
  std::string text = "crossmoe 0.1.0 (commit " + (commit.empty() ? std::string("unknown") : commit) + ")\n";
  std::string built;
  for (Isa isa : kernels::kIsas) built += (built.empty() ? "" : ", ") + kernels::isa_name(isa);
  text += "kernels  built: " + built + "; this CPU runs " + kernels::isa_name(kernels::active_isa()) + "\n";
#ifdef CROSSMOE_HAVE_TORCH
  // The c10d backends `train --nproc` can use in this build (probed when it was configured).
  std::string backends;
  if (train::Communicator::available(torch::kCPU)) backends += "Gloo (cpu)";
  if (train::Communicator::available(torch::Device(torch::kCUDA)))
    backends += std::string(backends.empty() ? "" : ", ") + "NCCL (cuda)";
  text += "trainer  yes (libtorch " TORCH_VERSION "; --nproc backends: " + (backends.empty() ? "none" : backends) + ")";
#else
  text += "trainer  no (built without libtorch)";
#endif
  return text;
}

}  // namespace crossmoe::cli
