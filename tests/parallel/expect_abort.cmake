# Runs the abort test program and passes only if the job ended non-zero within the timeout,
# printed the failing rank's message exactly once, and no rank got past the barrier.
# -D LAUNCH="mpirun;--oversubscribe;-np;2" (may be empty) -D PROGRAM=... -D FAILING_RANK=...
execute_process(COMMAND ${LAUNCH} ${PROGRAM} ${FAILING_RANK}
                RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
set(all "${out}${err}")
message("exit status: ${status}\n--- output ---\n${all}")
if(status MATCHES "timeout")
  message(FATAL_ERROR "the job hung instead of aborting")
endif()
if(status EQUAL 0)
  message(FATAL_ERROR "the job exited 0 although rank ${FAILING_RANK} failed")
endif()
set(report "\\[rank ${FAILING_RANK}\\] error: rank ${FAILING_RANK} failed on purpose \\[abort_job_main.cpp:[0-9]+\\]")
string(REGEX MATCHALL "${report}" reports "${all}")
list(LENGTH reports num_reports)
if(NOT num_reports EQUAL 1)
  message(FATAL_ERROR "expected the failing rank's message once, found it ${num_reports} times")
endif()
if(all MATCHES "passed the barrier")
  message(FATAL_ERROR "a rank got past the barrier")
endif()
