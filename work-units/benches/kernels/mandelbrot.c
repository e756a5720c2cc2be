/* Mandelbrot area estimate on a W x W grid over [-2, 0.5] x [-1.25, 1.25],
   at most 500 iterations per point (float, f64).
   Input: W in decimal on stdin. Output: points inside and the area. */
#include <stdio.h>

int main(void) {
    int w = 0;
    if (scanf("%d", &w) != 1 || w <= 0) return 2;
    const int max_iter = 500;
    long inside = 0;
    for (int y = 0; y < w; y++) {
        double ci = -1.25 + 2.5 * y / w;
        for (int x = 0; x < w; x++) {
            double cr = -2.0 + 2.5 * x / w;
            double zr = 0.0, zi = 0.0;
            int i = 0;
            while (i < max_iter && zr * zr + zi * zi <= 4.0) {
                double t = zr * zr - zi * zi + cr;
                zi = 2.0 * zr * zi + ci;
                zr = t;
                i++;
            }
            inside += (i == max_iter);
        }
    }
    printf("%ld %.6f\n", inside, 6.25 * (double)inside / ((double)w * w));
    return 0;
}
