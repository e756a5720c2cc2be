/* Sieve of Eratosthenes below M, repeated R times (integer, memory-bound).
   Input: "M R" in decimal on stdin. Output: the prime count. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    unsigned m = 0, r = 0;
    if (scanf("%u %u", &m, &r) != 2 || m < 2) return 2;
    unsigned char *flags = malloc(m);
    if (!flags) return 3;
    unsigned count = 0;
    for (unsigned rep = 0; rep < r; rep++) {
        memset(flags, 1, m);
        flags[0] = flags[1] = 0;
        for (unsigned i = 2; (unsigned long long)i * i < m; i++)
            if (flags[i])
                for (unsigned j = i * i; j < m; j += i) flags[j] = 0;
        count = 0;
        for (unsigned i = 0; i < m; i++) count += flags[i];
    }
    printf("%u\n", count);
    free(flags);
    return 0;
}
