/*
 * An emulated NVIDIA Management Library: libnvidia-ml.so.1 for benchmarks and tests.
 *
 * The real pynvml loads it through LD_LIBRARY_PATH, so meter, CodeCarbon and Zeus all measure
 * the same emulated GPUs, whose power is a known function of time. Each device draws a square
 * wave: `hi` watts for the first half of every `period` seconds (shifted by `phase`), `lo` for the
 * second half. Its energy counter is the exact integral (closed form) since CLOCK_MONOTONIC 0,
 * optionally published only every `update` seconds as real drivers do (~0.1 s). Power is
 * reported instantaneously (field 186 and, by default, nvmlDeviceGetPowerUsage) or as a 1 s
 * average (FAKE_NVML_POWER=avg1s, like Ampere and newer). FAKE_NVML_ENERGY=0 emulates a
 * pre-Volta GPU whose energy counter is NOT_SUPPORTED.
 *
 * Configuration, read at nvmlInit:
 *   FAKE_NVML_DEVICES  "lo,hi,period,phase;lo,hi,period,phase;..."   (W, W, s, s; default one 100/300 W, 1 s)
 *   FAKE_NVML_UPDATE   counter update period in seconds (default 0: continuous)
 *   FAKE_NVML_POWER    "instant" (default) or "avg1s" for nvmlDeviceGetPowerUsage
 *   FAKE_NVML_ENERGY   "1" (default) or "0"
 * Functions the tools call that are not emulated return NVML_ERROR_NOT_SUPPORTED (3).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
#define OK 0
#define UNINIT 1
#define INVALID 2
#define NOT_SUPPORTED 3
#define INSUFFICIENT 7
#define NOT_FOUND 6
#define MAXDEV 16

typedef struct {
    double lo, hi, period, phase;
    int index;
} dev_t_;

static dev_t_ devs[MAXDEV];
static int ndev = 0, inited = 0, energy_ok = 1, avg1s = 0;
static double update_s = 0.0;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Energy in joules from time 0 to t of a square wave: hi in [k*period - phase, k*period - phase + period/2). */
static double energy_j(const dev_t_ *d, double t) {
    double p = d->period, h = p / 2.0, u = t + d->phase;
    double k = floor(u / p), r = u - k * p;
    double e = k * (d->hi * h + d->lo * h) + (r < h ? d->hi * r : d->hi * h + d->lo * (r - h));
    /* subtract the part before t=0, i.e. the integral over [-phase, 0) in shifted time */
    double u0 = d->phase, k0 = floor(u0 / p), r0 = u0 - k0 * p;
    double e0 = k0 * (d->hi * h + d->lo * h) + (r0 < h ? d->hi * r0 : d->hi * h + d->lo * (r0 - h));
    return e - e0;
}

static double power_w(const dev_t_ *d, double t) {
    double p = d->period, u = t + d->phase, r = u - floor(u / p) * p;
    return r < p / 2.0 ? d->hi : d->lo;
}

static void configure(void) {
    const char *spec = getenv("FAKE_NVML_DEVICES");
    const char *up = getenv("FAKE_NVML_UPDATE");
    const char *pw = getenv("FAKE_NVML_POWER");
    const char *en = getenv("FAKE_NVML_ENERGY");
    update_s = up ? atof(up) : 0.0;
    avg1s = pw && strcmp(pw, "avg1s") == 0;
    energy_ok = !(en && strcmp(en, "0") == 0);
    ndev = 0;
    if (!spec || !*spec) spec = "100,300,1,0";
    char buf[1024];
    strncpy(buf, spec, sizeof buf - 1);
    buf[sizeof buf - 1] = 0;
    for (char *tok = strtok(buf, ";"); tok && ndev < MAXDEV; tok = strtok(NULL, ";")) {
        dev_t_ *d = &devs[ndev];
        if (sscanf(tok, "%lf,%lf,%lf,%lf", &d->lo, &d->hi, &d->period, &d->phase) == 4 && d->period > 0) {
            d->index = ndev++;
        }
    }
}

#define DEV(h) ((dev_t_ *)(h))
#define CHECK(h) do { if (!inited) return UNINIT; if (!(h)) return INVALID; } while (0)

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; configure(); inited++; return OK; }
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlShutdown(void) { if (!inited) return UNINIT; inited--; return OK; }

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case OK: return "Success";
    case UNINIT: return "Uninitialized";
    case INVALID: return "Invalid Argument";
    case NOT_SUPPORTED: return "Not Supported";
    case NOT_FOUND: return "Not Found";
    case INSUFFICIENT: return "Insufficient Size";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t copy_str(char *dst, unsigned int len, const char *src) {
    if (!dst) return INVALID;
    if (strlen(src) + 1 > len) return INSUFFICIENT;
    strcpy(dst, src);
    return OK;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *v, unsigned int len) { return copy_str(v, len, "999.99.99-emulated"); }
nvmlReturn_t nvmlSystemGetNVMLVersion(char *v, unsigned int len) { return copy_str(v, len, "13.999.99"); }
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) { *v = 13000; return OK; }
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { *v = 13000; return OK; }

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) { if (!inited) return UNINIT; *n = (unsigned)ndev; return OK; }
nvmlReturn_t nvmlDeviceGetCount(unsigned int *n) { return nvmlDeviceGetCount_v2(n); }
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **h) {
    if (!inited) return UNINIT;
    if (i >= (unsigned)ndev) return INVALID;
    *h = &devs[i];
    return OK;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, void **h) { return nvmlDeviceGetHandleByIndex_v2(i, h); }
nvmlReturn_t nvmlDeviceGetIndex(void *h, unsigned int *i) { CHECK(h); *i = (unsigned)DEV(h)->index; return OK; }
nvmlReturn_t nvmlDeviceGetName(void *h, char *name, unsigned int len) {
    CHECK(h);
    return copy_str(name, len, energy_ok ? "Emulated GPU (Ampere)" : "Emulated GPU (Pascal)");
}
nvmlReturn_t nvmlDeviceGetUUID(void *h, char *uuid, unsigned int len) {
    CHECK(h);
    char b[64];
    snprintf(b, sizeof b, "GPU-e0000000-0000-0000-0000-%012d", DEV(h)->index);
    return copy_str(uuid, len, b);
}
nvmlReturn_t nvmlDeviceGetArchitecture(void *h, unsigned int *arch) { CHECK(h); *arch = energy_ok ? 7 : 4; return OK; }
nvmlReturn_t nvmlDeviceGetCudaComputeCapability(void *h, int *major, int *minor) {
    CHECK(h); *major = energy_ok ? 8 : 6; *minor = 0; return OK;
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(void *h, unsigned long long *mj) {
    CHECK(h);
    if (!energy_ok) return NOT_SUPPORTED;
    double t = now_s();
    if (update_s > 0) t = floor(t / update_s) * update_s;
    *mj = (unsigned long long)floor(energy_j(DEV(h), t) * 1000.0);
    return OK;
}

static double reported_power(dev_t_ *d, int average) {
    double t = now_s();
    if (average) return energy_j(d, t) - energy_j(d, t - 1.0);
    return power_w(d, t);
}

nvmlReturn_t nvmlDeviceGetPowerUsage(void *h, unsigned int *mw) {
    CHECK(h);
    *mw = (unsigned int)llround(reported_power(DEV(h), avg1s) * 1000.0);
    return OK;
}

typedef struct {
    unsigned int fieldId, scopeId;
    long long timestamp, latencyUsec;
    unsigned int valueType;
    unsigned int nvmlReturn;
    union { double d; unsigned int ui; unsigned long ul; unsigned long long ull; long long sll; int si; unsigned short us; } value;
} fieldvalue_t;

nvmlReturn_t nvmlDeviceGetFieldValues(void *h, int count, fieldvalue_t *values) {
    CHECK(h);
    for (int i = 0; i < count; i++) {
        fieldvalue_t *v = &values[i];
        v->timestamp = (long long)(now_s() * 1e6);
        v->latencyUsec = 0;
        if (v->fieldId == 186 || v->fieldId == 185) { /* POWER_INSTANT, POWER_AVERAGE (mW) */
            v->valueType = 1;
            v->value.ui = (unsigned int)llround(reported_power(DEV(h), v->fieldId == 185) * 1000.0);
            v->nvmlReturn = OK;
        } else if ((v->fieldId == 83 || v->fieldId == 191) && energy_ok) { /* total energy, mJ */
            unsigned long long mj;
            nvmlDeviceGetTotalEnergyConsumption(h, &mj);
            v->valueType = 3;
            v->value.ull = mj;
            v->nvmlReturn = OK;
        } else {
            v->nvmlReturn = NOT_SUPPORTED;
        }
    }
    return OK;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(void *h, unsigned int *mw) { CHECK(h); *mw = 400000; return OK; }
nvmlReturn_t nvmlDeviceGetPowerManagementLimit(void *h, unsigned int *mw) { CHECK(h); *mw = 400000; return OK; }
nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(void *h, unsigned int *mw) { CHECK(h); *mw = 400000; return OK; }
nvmlReturn_t nvmlDeviceGetPowerManagementLimitConstraints(void *h, unsigned int *lo, unsigned int *hi) {
    CHECK(h); *lo = 100000; *hi = 400000; return OK;
}
nvmlReturn_t nvmlDeviceGetMigMode(void *h, unsigned int *cur, unsigned int *pend) { CHECK(h); *cur = 0; *pend = 0; return OK; }
nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(void *h, unsigned int *n) { CHECK(h); *n = 0; return OK; }
nvmlReturn_t nvmlDeviceGetPersistenceMode(void *h, unsigned int *m) { CHECK(h); *m = 1; return OK; }
nvmlReturn_t nvmlDeviceGetComputeMode(void *h, unsigned int *m) { CHECK(h); *m = 0; return OK; }
nvmlReturn_t nvmlDeviceGetTemperature(void *h, unsigned int sensor, unsigned int *t) { CHECK(h); (void)sensor; *t = 50; return OK; }

typedef struct { unsigned int gpu, memory; } util_t;
nvmlReturn_t nvmlDeviceGetUtilizationRates(void *h, util_t *u) { CHECK(h); u->gpu = 100; u->memory = 50; return OK; }

typedef struct { unsigned long long total, free, used; } mem_t;
nvmlReturn_t nvmlDeviceGetMemoryInfo(void *h, mem_t *m) {
    CHECK(h); m->total = 80ULL << 30; m->used = 10ULL << 30; m->free = m->total - m->used; return OK;
}
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } mem2_t;
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(void *h, mem2_t *m) {
    CHECK(h); m->total = 80ULL << 30; m->reserved = 0; m->used = 10ULL << 30; m->free = m->total - m->used; return OK;
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(void *h, unsigned int *count, void *infos) {
    CHECK(h); (void)infos; *count = 0; return OK;
}
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(void *h, unsigned int *count, void *infos) {
    CHECK(h); (void)infos; *count = 0; return OK;
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(void *h, unsigned int *c, void *i) { return nvmlDeviceGetComputeRunningProcesses_v3(h, c, i); }
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(void *h, unsigned int *c, void *i) { return nvmlDeviceGetComputeRunningProcesses_v3(h, c, i); }

/* Called by the tools' optimizers or diagnostics; not emulated. */
nvmlReturn_t nvmlDeviceGetSupportedGraphicsClocks(void *h, unsigned int m, unsigned int *c, unsigned int *k) { (void)h; (void)m; (void)c; (void)k; return NOT_SUPPORTED; }
nvmlReturn_t nvmlDeviceGetSupportedMemoryClocks(void *h, unsigned int *c, unsigned int *k) { (void)h; (void)c; (void)k; return NOT_SUPPORTED; }
nvmlReturn_t nvmlDeviceSetPersistenceMode(void *h, unsigned int m) { (void)h; (void)m; return NOT_SUPPORTED; }
nvmlReturn_t nvmlDeviceSetPowerManagementLimit(void *h, unsigned int l) { (void)h; (void)l; return NOT_SUPPORTED; }
nvmlReturn_t nvmlDeviceSetGpuLockedClocks(void *h, unsigned int a, unsigned int b) { (void)h; (void)a; (void)b; return NOT_SUPPORTED; }
nvmlReturn_t nvmlDeviceResetGpuLockedClocks(void *h) { (void)h; return NOT_SUPPORTED; }
nvmlReturn_t nvmlDeviceSetMemoryLockedClocks(void *h, unsigned int a, unsigned int b) { (void)h; (void)a; (void)b; return NOT_SUPPORTED; }
nvmlReturn_t nvmlDeviceResetMemoryLockedClocks(void *h) { (void)h; return NOT_SUPPORTED; }
nvmlReturn_t nvmlDeviceGetPciInfo_v3(void *h, void *p) { (void)h; (void)p; return NOT_SUPPORTED; }
nvmlReturn_t nvmlDeviceGetTemperatureV(void *h, void *t) { (void)h; (void)t; return NOT_SUPPORTED; }
nvmlReturn_t nvmlDeviceGetMemoryInfo_v3(void *h, void *m) { (void)h; (void)m; return NOT_SUPPORTED; }
