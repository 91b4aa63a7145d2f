/* FDO benchmark: a small bytecode interpreter whose hot paths a compiler finds only from a
 * profile. `mix` has a short hot path and a long rare one, so -O2 alone does not inline it; the
 * switch's cases are far from equally hot; two rare instructions go through a table of function
 * pointers (indirect calls whose targets only a profile names). Runs argv[1] rounds (default
 * 4000000, about 3 s) of a fixed program and prints a checksum, which no build may change. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct { uint64_t acc, rare, regs[8]; } vm_t;
typedef void (*handler_t)(vm_t *vm, uint32_t arg);

/* A short hot path and a long rare one: too big to inline where nothing says the call is hot. */
uint64_t mix(uint64_t x, uint64_t y) {
    uint64_t h = x ^ (y * 0x9e3779b97f4a7c15ULL);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    if ((h & 0x7f) == 0) { /* about one call in 128: stir harder */
        h += y >> 1;
        h = (h & 1) ? (h << 7) | (h >> 57) : (h >> 11) | (h << 53);
        h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL; h ^= h >> 29; h += y >> 2;
        h = (h & 2) ? (h << 9) | (h >> 55) : (h >> 13) | (h << 51);
        h ^= h >> 31; h *= 0x94d049bb133111ebULL; h ^= h >> 27; h += y >> 3;
        h = (h & 4) ? (h << 5) | (h >> 59) : (h >> 17) | (h << 47);
        h ^= h >> 30; h *= 0xbf58476d1ce4e5b9ULL; h ^= h >> 27; h += y >> 4;
        h = (h & 8) ? (h << 3) | (h >> 61) : (h >> 19) | (h << 45);
        h ^= h >> 33; h *= 0xff51afd7ed558ccdULL; h ^= h >> 29; h += y >> 5;
        h = (h & 16) ? (h << 11) | (h >> 53) : (h >> 7) | (h << 57);
        h ^= h >> 31; h *= 0x94d049bb133111ebULL; h ^= h >> 27; h += y >> 6;
        h = (h & 32) ? (h << 13) | (h >> 51) : (h >> 23) | (h << 41);
    }
    return h ^ (h >> 29);
}

__attribute__((noinline)) void rare_fixup(vm_t *vm, uint64_t h) {
    vm->rare += h & 0xffff;
    for (int i = 0; i < 8; i++) vm->regs[i] ^= h >> i;
}

static void op_sub(vm_t *vm, uint32_t arg) { vm->acc -= vm->regs[arg & 7] ^ arg; }
void op_shift(vm_t *vm, uint32_t arg) { unsigned s = arg % 13; vm->acc = (vm->acc << s) | (vm->acc >> (64 - s - 1) >> 1); }
handler_t slow_ops[2];

enum { OP_ADD, OP_HASH, OP_STORE, OP_XOR, OP_SUB, OP_SHIFT, OP_SWAP, OP_CLEAR, N_OPS };
#define PROGRAM_LEN 256
typedef struct { uint8_t op; uint32_t arg; } insn_t;
static insn_t program[PROGRAM_LEN];

static void generate(void) {
    slow_ops[0] = op_sub; slow_ops[1] = op_shift;
    uint64_t s = 12345;
    for (int i = 0; i < PROGRAM_LEN; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        unsigned r = (unsigned)(s >> 33) % 100;
        program[i].op = r < 35 ? OP_ADD : r < 70 ? OP_HASH : r < 85 ? OP_STORE : r < 93 ? OP_XOR
                      : r < 96 ? OP_SUB : r < 98 ? OP_SHIFT : r < 99 ? OP_SWAP : OP_CLEAR;
        program[i].arg = (uint32_t)(s >> 17);
    }
}

uint64_t run(vm_t *vm, long rounds) {
    uint64_t check = 0;
    for (long r = 0; r < rounds; r++) {
        for (int pc = 0; pc < PROGRAM_LEN; pc++) {
            uint32_t arg = program[pc].arg;
            switch (program[pc].op) {
            case OP_ADD: vm->acc += vm->regs[arg & 7] + arg; break;
            case OP_HASH: {
                uint64_t h = mix(vm->acc, arg);
                if ((h & 0x3ff) == 0) rare_fixup(vm, h);
                vm->acc = h;
                break;
            }
            case OP_STORE: vm->regs[arg & 7] = vm->acc + arg; break;
            case OP_XOR: { uint64_t v = vm->regs[arg & 7]; vm->acc ^= v > vm->acc ? v << 1 : v >> 1; break; }
            case OP_SUB: case OP_SHIFT: slow_ops[program[pc].op - OP_SUB](vm, arg); break;
            case OP_SWAP: { uint64_t t = vm->regs[arg & 7]; vm->regs[arg & 7] = vm->regs[(arg >> 3) & 7]; vm->regs[(arg >> 3) & 7] = t; break; }
            default: for (int i = 0; i < 8; i++) vm->regs[i] = mix(vm->regs[i], i); break;
            }
        }
        check = mix(check, vm->acc);
    }
    return check;
}

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 4000000;
    generate();
    vm_t vm = {0};
    uint64_t total = 0;
    for (int pass = 0; pass < 1000; pass++) total ^= run(&vm, rounds / 1000 + 1);
    printf("checksum %016llx rare %llu\n", (unsigned long long)total, (unsigned long long)vm.rare);
    return 0;
}
