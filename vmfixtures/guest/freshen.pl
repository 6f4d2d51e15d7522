# vmfixtures' clone helper: started in a pool template just before its memory is saved, it waits in
# every clone of that template for one message on a FIFO, then gives the clone its own random
# generator, clock and name. An already running process costs a clone a few milliseconds; starting
# one (exec, perl's start-up, all of it translated afresh under TCG) cost ~0.25 s.
#
# Message (binary): 64 bytes of host randomness, the host's time as two little-endian int64
# (seconds, nanoseconds), then the hostname. The hostname is written last, and only when the rest
# worked: the host waits for it (and falls back to a process of its own when it does not come).
use strict;
my $fifo = "/run/vmfixtures/freshen";
mkdir "/run/vmfixtures", 0700;
unless (-p $fifo) { require POSIX; POSIX::mkfifo($fifo, 0600) or die "mkfifo $fifo: $!"; }
open(my $r, "+<", "/dev/urandom") or die "urandom: $!";
$0 = "vmfixtures-freshen";
while (1) {
    open(my $in, "<", $fifo) or die "$fifo: $!";  # blocks until a writer opens it
    binmode $in;
    my $msg = do { local $/; <$in> };
    close $in;
    next if length($msg) < 81;
    syswrite($r, substr($msg, 0, 64)) == 64 or next;
    ioctl($r, 0x5207, 0) or next;  # RNDRESEEDCRNG: rekey the generator from the pool now
    my ($sec, $ns) = unpack("q<q<", substr($msg, 64, 16));
    syscall(227, 0, pack("q<q<", $sec, $ns)) == 0 or next;  # clock_settime(CLOCK_REALTIME), x86_64
    open(my $h, ">", "/proc/sys/kernel/hostname") or next;
    print $h substr($msg, 80);
    close $h;
}
