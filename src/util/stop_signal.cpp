// The stop-signal handler: async-signal-safe (it writes one sig_atomic_t and nothing else).
// Reading the flag is left to the caller (the trainer, at step boundaries).
#include "src/util/stop_signal.h"

#include <cerrno>
#include <csignal>
#include <cstring>

#include "src/util/check.h"

namespace moe {

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void record_stop_signal(int signal) { g_stop_signal = signal; }

}  // namespace

void install_stop_signal_handlers() {
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_handler = record_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // reads and writes in progress continue after the handler
  for (int signal : {SIGTERM, SIGINT, SIGHUP}) {
    MOE_CHECK(sigaction(signal, &action, nullptr) == 0, "cannot install the handler of ", stop_signal_name(signal),
              ": ", std::strerror(errno));
  }
}

int stop_signal() { return g_stop_signal; }

const char* stop_signal_name(int signal) {
  switch (signal) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    default: return "a stop signal";
  }
}

}  // namespace moe
