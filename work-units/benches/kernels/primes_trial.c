/* Count primes below N by trial division (integer, branchy).
   Input: N in decimal on stdin. Output: the count. */
#include <stdio.h>

int main(void) {
    unsigned n = 0;
    if (scanf("%u", &n) != 1) return 2;
    unsigned count = 0;
    for (unsigned k = 2; k < n; k++) {
        int prime = 1;
        for (unsigned d = 2; d * d <= k; d++) {
            if (k % d == 0) { prime = 0; break; }
        }
        count += prime;
    }
    printf("%u\n", count);
    return 0;
}
