//! Model definitions (TinyConv, VGG, ResNet, LeNet-5, MLP, a small ViT) built from
//! `approx-train` layers, loaded from and saved to safetensors with PyTorch tensor names.
//! The implementation arrives with the models issue.
