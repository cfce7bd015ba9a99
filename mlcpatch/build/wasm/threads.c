/* Parallel loops for the wasm CPU build: a pool of Web Workers over one shared memory.
 *
 * TVM's web runtime runs every parallel loop serially (its TVMBackendParallelLaunch calls the
 * loop body once with one task). The toolchain compiles that runtime with its parallel entry
 * points renamed (mlcpatch_serial_*) and links this file in their place.
 *
 * How the pool works: the page instantiates the same .wasm in N-1 workers on the engine's
 * shared WebAssembly.Memory (web/src/wasm_threads.js). Each worker sets its own stack pointer
 * (a block allocated here by the engine's thread) and then never leaves mlcpatch_worker_main(),
 * which sleeps on its own `wake` word. A launch of n tasks publishes the loop body, bumps the
 * wake words of workers 0..n-2 (only those: a worker never reads a launch it is not part of,
 * so it cannot mistake the next launch's body for this one's), runs task 0 itself and waits
 * until those workers are done. The loop bodies are plain functions of (task, env, closure),
 * called through the function table, which is the same in every instance of one module.
 *
 * What workers must never do: touch the runtime's state (its allocator, its workspace pool,
 * its thread-locals, which this runtime build compiles as plain globals). A generated loop
 * body may ask for workspace (TVMBackendAllocWorkspace) when a buffer is too large for the
 * stack; those calls take a lock here, so they reach the runtime one at a time while the
 * engine's thread is inside the launch.
 *
 * Without workers (no cross-origin isolation, one thread asked, a WebGPU build) every launch
 * runs serially, exactly as the stock runtime does.
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime under -std=c11 */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <emscripten/emscripten.h>

typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;

typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

void* mlcpatch_serial_alloc_workspace(int device_type, int device_id, uint64_t nbytes,
                                      int dtype_code_hint, int dtype_bits_hint);
int mlcpatch_serial_free_workspace(int device_type, int device_id, void* ptr);

#define SEQ __ATOMIC_SEQ_CST
/* A launch whose workers make no progress for this long fails (and threads are switched off)
 * instead of leaving the page spinning forever. */
#define STALL_SECONDS 30
#define MAX_WORKERS 63

static int32_t workers;             /* workers launches may use (mlcpatch_threads_enable) */
static int32_t ready;               /* workers that have entered mlcpatch_worker_main */
static int32_t main_may_block;      /* 0 on a browser's main thread: it may not wait */
static int32_t busy;                /* a launch is running (nested launches run serially) */
static int32_t wake[MAX_WORKERS];   /* bumped when worker i has a task; it sleeps on it */
static int32_t in_task[MAX_WORKERS]; /* worker i is inside a loop body */
static int32_t pending;             /* woken workers that have not finished their task */
static int32_t failed;              /* a task returned non-zero, or a worker trapped */
static int32_t worker_tasks;        /* tasks the workers have run (the engine reports it) */
static FTVMParallelLambda job_fn;
static void* job_data;
static TVMParallelGroupEnv job_env;
static int32_t barrier_count, barrier_sense;
static int32_t workspace_lock;

/* Loads of the word before a thread goes to sleep on it: a decode step launches a loop about
 * every 0.1-0.3 ms, and waking a sleeping worker (futex, scheduler) costs tens of microseconds
 * each time, so a worker keeps looking for the next launch that long before sleeping. */
#define SPINS_BEFORE_SLEEP (1 << 17)

/* Every wait goes through this function, called through a volatile pointer so that neither
 * LLVM nor binaryen inlines it. V8's baseline compiler (Liftoff) loses the caller's locals
 * across a memory.atomic.wait32 in the same function: under Node 20 with --liftoff-only a worker
 * ran task 0 instead of its own (right with --no-liftoff), and a 2-thread test in Chromium hung
 * once in the full suite, likely the same way; across a call every local is saved. */
__attribute__((noinline)) static void sleep_on(int32_t* addr, int32_t value) {
  __builtin_wasm_memory_atomic_wait32(addr, value, -1);
}
static void (*volatile sleep_fn)(int32_t*, int32_t) = sleep_on;

static void wait_while_equal(int32_t* addr, int32_t value, int may_block) {
  for (int32_t spins = 0; __atomic_load_n(addr, SEQ) == value; spins++) {
    if (may_block && spins >= SPINS_BEFORE_SLEEP) sleep_fn(addr, value);
  }
}

static double monotonic_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void wake_all(int32_t* addr) { __builtin_wasm_memory_atomic_notify(addr, (uint32_t)-1); }

/* Stack blocks for `count` workers, `bytes` each (16-byte aligned); the engine passes the top
 * of block i to worker i. Allocated by the engine's thread: the allocator is not thread-safe. */
EMSCRIPTEN_KEEPALIVE void* mlcpatch_threads_alloc_stacks(int32_t count, int32_t bytes) {
  return aligned_alloc(16, (size_t)count * (size_t)bytes);
}

/* Workers inside mlcpatch_worker_main, waiting for launches (the engine polls this). */
EMSCRIPTEN_KEEPALIVE int32_t mlcpatch_threads_ready(void) { return __atomic_load_n(&ready, SEQ); }

/* Called by the engine once mlcpatch_threads_ready() reached `count`. */
EMSCRIPTEN_KEEPALIVE void mlcpatch_threads_enable(int32_t count, int32_t may_block) {
  if (count > MAX_WORKERS) count = MAX_WORKERS;
  main_may_block = may_block;
  __atomic_store_n(&workers, count, SEQ);
}

/* Threads a parallel loop runs on now (the engine's thread included). */
EMSCRIPTEN_KEEPALIVE int32_t mlcpatch_threads_count(void) {
  return __atomic_load_n(&workers, SEQ) + 1;
}

/* A worker's whole life: wait until a launch has a task for it, run it, report. */
EMSCRIPTEN_KEEPALIVE void mlcpatch_worker_main(int32_t index) {
  if (index < 0 || index >= MAX_WORKERS) return;
  int32_t seen = __atomic_load_n(&wake[index], SEQ);
  /* Counted once `seen` is read: a launch the engine starts after seeing this worker ready
   * bumps wake[index] past it, so the worker cannot sleep through its first task. */
  __atomic_add_fetch(&ready, 1, SEQ);
  for (;;) {
    wait_while_equal(&wake[index], seen, 1);
    seen = __atomic_load_n(&wake[index], SEQ);
    __atomic_store_n(&in_task[index], 1, SEQ);
    if (job_fn(index + 1, &job_env, job_data) != 0) __atomic_store_n(&failed, 1, SEQ);
    __atomic_store_n(&in_task[index], 0, SEQ);
    __atomic_add_fetch(&worker_tasks, 1, SEQ);
    if (__atomic_sub_fetch(&pending, 1, SEQ) == 0) wake_all(&pending);
  }
}

/* Loop tasks the workers have run so far (0 when every loop ran on the engine's thread). */
EMSCRIPTEN_KEEPALIVE int32_t mlcpatch_threads_worker_tasks(void) {
  return __atomic_load_n(&worker_tasks, SEQ);
}

/* A worker trapped (its page code calls this on its instance): the launch it was in fails
 * instead of waiting for it forever, and every later launch runs on the engine's thread. */
EMSCRIPTEN_KEEPALIVE void mlcpatch_worker_failed(int32_t index) {
  __atomic_store_n(&workers, 0, SEQ);
  __atomic_store_n(&failed, 1, SEQ);
  if (index >= 0 && index < MAX_WORKERS && __atomic_exchange_n(&in_task[index], 0, SEQ)) {
    if (__atomic_sub_fetch(&pending, 1, SEQ) == 0) wake_all(&pending);
  }
}

int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void* cdata, int num_task) {
  int32_t threads = __atomic_load_n(&workers, SEQ) + 1;
  int32_t idle = 0;
  if (threads == 1 || !__atomic_compare_exchange_n(&busy, &idle, 1, 0, SEQ, SEQ)) {
    TVMParallelGroupEnv env = {0, 1};
    return flambda(0, &env, cdata);
  }
  int32_t n = (num_task <= 0 || num_task > threads) ? threads : num_task;
  job_fn = flambda;
  job_data = cdata;
  job_env.sync_handle = 0;
  job_env.num_task = n;
  __atomic_store_n(&failed, 0, SEQ);
  __atomic_store_n(&pending, n - 1, SEQ);
  for (int32_t i = 0; i < n - 1; i++) {
    __atomic_add_fetch(&wake[i], 1, SEQ);
    __builtin_wasm_memory_atomic_notify(&wake[i], 1);
  }
  int rc = flambda(0, &job_env, cdata);
  double since = -1;
  for (int32_t left, spins = 1; (left = __atomic_load_n(&pending, SEQ)) > 0; spins++) {
    if (main_may_block && spins >= SPINS_BEFORE_SLEEP) {
      sleep_fn(&pending, left);  /* woken by the last task; stall checks stay on the page */
    } else if ((spins & ((1 << 20) - 1)) == 0) {
      double now = monotonic_seconds();
      if (since < 0) since = now;
      if (now - since > STALL_SECONDS) {
        __atomic_store_n(&workers, 0, SEQ);
        __atomic_store_n(&failed, 1, SEQ);
        break;
      }
    }
  }
  if (__atomic_load_n(&failed, SEQ)) rc = -1;
  __atomic_store_n(&busy, 0, SEQ);
  return rc;
}

/* Sense-reversing barrier over the tasks of the running launch. */
int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv* penv) {
  int32_t n = penv->num_task;
  if (n <= 1) return 0;
  int32_t sense = __atomic_load_n(&barrier_sense, SEQ);
  if (__atomic_add_fetch(&barrier_count, 1, SEQ) == n) {
    __atomic_store_n(&barrier_count, 0, SEQ);
    __atomic_store_n(&barrier_sense, !sense, SEQ);
    wake_all(&barrier_sense);
  } else {
    /* Task 0 runs on the engine's thread, which may not block on a browser's main thread. */
    wait_while_equal(&barrier_sense, sense, task_id != 0 || main_may_block);
  }
  return 0;
}

static void lock_workspace(void) {
  int32_t open = 0;
  while (!__atomic_compare_exchange_n(&workspace_lock, &open, 1, 0, SEQ, SEQ)) open = 0;
}

static void unlock_workspace(void) { __atomic_store_n(&workspace_lock, 0, SEQ); }

void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                               int dtype_code_hint, int dtype_bits_hint) {
  lock_workspace();
  void* ptr = mlcpatch_serial_alloc_workspace(device_type, device_id, nbytes, dtype_code_hint,
                                              dtype_bits_hint);
  unlock_workspace();
  return ptr;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  lock_workspace();
  int rc = mlcpatch_serial_free_workspace(device_type, device_id, ptr);
  unlock_workspace();
  return rc;
}
