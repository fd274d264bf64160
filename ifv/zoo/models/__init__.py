"""The architectures: DenseNet-BC, GoogLeNet, the CIFAR ResNets and SRNet."""
