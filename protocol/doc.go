// Package protocol is the root of the Ferry wire protocol, which carries HTTP
// and websockets between the host agent and the guest init (and between init
// and its Python workers) over one reliable byte stream.
//
// The protocol is specified in SPEC.md beside this file and implemented by
// three packages: frame (the 10-byte header and bounded frame reading),
// message (payload encodings) and mux (sessions and streams). Golden test
// vectors in testdata/vectors.json pin the byte encoding for every
// implementation.
package protocol
