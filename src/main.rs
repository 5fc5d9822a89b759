fn main() {
    println!("skrr-onnx");
}
