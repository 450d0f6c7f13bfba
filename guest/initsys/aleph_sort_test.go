package initsys

import "testing"

// Connections are sorted as protocol/SPEC.md §3.5 says: the reference's
// first bytes to its server, HELLO and everything else to Ferry's side
// (which refuses what is not a HELLO with a GOAWAY).
func TestConnectionsSortedByFirstByte(t *testing.T) {
	reference := []byte("0123456789h!")
	reference = append(reference, 0x80, 0x85, 0x8f, 0xde, 0xdf)
	for _, b := range reference {
		if isFerry(b) {
			t.Errorf("first byte %#x went to Ferry, want the reference protocol", b)
		}
	}
	for _, b := range []byte{0x01, 'G', 'P', 0x00, 0x90, 0xdc, 'S'} {
		if !isFerry(b) {
			t.Errorf("first byte %#x went to the reference protocol, want Ferry", b)
		}
	}
}
