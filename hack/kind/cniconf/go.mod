module bridgeport.local/hack/kind/cniconf

go 1.26.0
