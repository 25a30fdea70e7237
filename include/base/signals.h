/*
 * signals.h - graceful stop of aesim-train on SIGTERM, SIGINT and SIGUSR1,
 * and a bounded exit afterwards.
 *
 * What it does: installs handlers that only record the number of the first
 * signal received (in a volatile sig_atomic_t, the one thing a handler may
 * portably write: C11 7.14.1.1p5, POSIX signal-safety(7)).  The training loop
 * polls signals_pending() once per step and folds the answer into the
 * per-step MPI_Allreduce it already makes, so a signal delivered to ANY rank
 * (or to mpirun, which passes SIGTERM on to every rank) stops every rank after
 * the same step; rank 0 then writes a checkpoint and every rank exits 0.
 *
 * Which signals and why:
 *   SIGTERM  sent by SLURM (scancel, or the time limit) before SIGKILL, and by
 *            mpirun to every rank when mpirun itself gets SIGTERM or SIGINT.
 *            Measured with Open MPI 4.1.4: mpirun sends SIGCONT at once,
 *            SIGTERM odls_base_sigkill_timeout seconds later (default 1) and
 *            SIGKILL as long again after that, so a rank has that many
 *            seconds to finish its step and write the checkpoint: raise it
 *            (OMPI_MCA_odls_base_sigkill_timeout=60) for long steps.  While
 *            mpirun shuts the job down, MPI_Finalize in the ranks never
 *            returns (PMIx_Finalize waits for the aborting server): see
 *            signals_exit_watchdog.
 *   SIGINT   Ctrl-C.  A SIGINT after a stop was already requested takes the
 *            default action (ends the process at once), so an impatient user
 *            can still kill it.
 *   SIGUSR1  mpirun forwards it to every rank WITHOUT a SIGKILL afterwards:
 *            the safe way to ask a whole mpirun job to checkpoint and stop.
 *            Under srun, SLURM's `#SBATCH --signal=USR1@120` sends it to every
 *            rank itself (launch/slurm.sbatch).
 * Repeated SIGTERM/SIGUSR1 (SLURM signals both mpirun and the ranks, and
 * mpirun passes it on) are absorbed: the first one is kept.
 *
 * Global state: the recorded signal number is the only file-scope mutable
 * variable in aesim.  A signal handler receives no user pointer, so it cannot
 * reach a context struct; a static sig_atomic_t is the only conforming way
 * for it to communicate.  Everything else reads it through signals_pending().
 *
 * What it does not do: any I/O or MPI in the handler; handling SIGKILL (it
 * cannot be caught: a killed rank makes Open MPI abort the job, and the last
 * checkpoint on disk is intact because checkpoints are written atomically).
 * Threading: install and restore from the main thread; handlers are installed
 * with SA_RESTART so interrupted file writes are restarted, not failed.
 */
#ifndef AESIM_SIGNALS_H
#define AESIM_SIGNALS_H

#include <signal.h>

/* Signals handled, in the order of SignalGuard.old. */
#define SIGNALS_COUNT 3

/* The handlers that were installed before signals_install (to restore). */
typedef struct SignalGuard {
    struct sigaction old[SIGNALS_COUNT]; /* SIGTERM, SIGINT, SIGUSR1 */
    int installed;                       /* 1 between install and restore */
} SignalGuard;

/* Clears the recorded signal and installs the stop handlers for SIGTERM,
 * SIGINT and SIGUSR1, saving the previous dispositions in *g.  Never fails
 * (sigaction with valid arguments cannot fail; asserted). */
void signals_install(SignalGuard *g);

/* Puts back the dispositions saved by signals_install.  Safe to call twice. */
void signals_restore(SignalGuard *g);

/* The number of the first handled signal received since signals_install, or
 * 0 if none.  Async-signal-safe read of a sig_atomic_t. */
int signals_pending(void);

/* After a graceful stop (the checkpoint is on disk): makes the process end
 * with exit status 0 if it is still alive `seconds` from now (alarm(2) and a
 * SIGALRM handler calling _exit(0)).  This bounds MPI_Finalize, which blocks
 * forever when mpirun itself is shutting the job down; when it returns in
 * time the process exits normally first. */
void signals_exit_watchdog(unsigned seconds);

/* "SIGTERM", "SIGINT", "SIGUSR1", or "signal" for any other number. */
const char *signals_name(int sig);

#endif
