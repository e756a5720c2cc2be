//! Native Mandelbrot with the same operation order as apps/mandelbrot.wat:
//! the reference the tests check the app against and the native side of
//! the benchmark. Included by path from both, so there is one copy.

/// Iteration counts of the tile whose pixel (x, y) is
/// c = (x0 + x*step) + (y0 + y*step)i, as little-endian u32s.
pub(crate) fn mandelbrot_native(x0: f64, y0: f64, step: f64, w: u32, h: u32, max: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity((w as usize) * (h as usize) * 4);
    for y in 0..h {
        let cy = y0 + (y as f64) * step;
        for x in 0..w {
            let cx = x0 + (x as f64) * step;
            let (mut zx, mut zy, mut n) = (0.0f64, 0.0f64, 0u32);
            while n < max {
                let zx2 = zx * zx;
                let zy2 = zy * zy;
                if zx2 + zy2 > 4.0 {
                    break;
                }
                zy = 2.0 * zx * zy + cy;
                zx = zx2 - zy2 + cx;
                n += 1;
            }
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    out
}
