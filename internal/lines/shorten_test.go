package lines

import "testing"

func TestShorten(t *testing.T) {
	for _, tc := range []struct {
		s    string
		max  int
		want string
	}{
		{"short", 5, "short"},
		{"longer", 4, "long..."},
		{"aé", 2, "a..."},                              // é is 2 bytes: not cut inside it
		{"ab€", 4, "ab..."},                            // € is 3 bytes
		{"\x80\x80\x80\x80\x80\x80", 5, "\x80\x80..."}, // not UTF-8: 3 bytes back at most
		{"", 0, ""},
	} {
		if got := Shorten(tc.s, tc.max); got != tc.want {
			t.Errorf("Shorten(%q, %d) = %q, want %q", tc.s, tc.max, got, tc.want)
		}
	}
}
