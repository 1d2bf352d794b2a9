// Graceful stop on SIGTERM, SIGINT and SIGHUP: the handler only records the signal, and the
// training loop asks for it at each step boundary (it saves a checkpoint, then exits).
#pragma once

namespace moe {

// Installs the handler for SIGTERM, SIGINT and SIGHUP (sigaction, SA_RESTART). Later signals,
// a second one during the save included, only record again: a save in progress finishes (the
// checkpoint directory is committed atomically, so even kill -9 leaves `latest` intact).
void install_stop_signal_handlers();
// The last stop signal received since install (SIGTERM, SIGINT or SIGHUP), or 0.
int stop_signal();
// "SIGTERM", "SIGINT", "SIGHUP", or "a stop signal" for any other number.
const char* stop_signal_name(int signal);
// The documented exit code of a run stopped by `signal`: 128 + signal (the shell's convention
// for a process ended by that signal: 143 SIGTERM, 130 SIGINT, 129 SIGHUP).
inline int stop_exit_code(int signal) { return 128 + signal; }

}  // namespace moe
