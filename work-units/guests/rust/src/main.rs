// src/main.rs of a binary crate `sum`
use std::io::Read;
fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let sum: i64 = input.split_whitespace().filter_map(|w| w.parse::<i64>().ok()).sum();
    println!("{sum}");
}
