module github.com/ferry-vm/ferry

go 1.25

require github.com/klauspost/compress v1.20.3

require go.uber.org/goleak v1.3.0 // indirect
