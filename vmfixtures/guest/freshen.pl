# vmfixtures' clone helper: started in a pool template just before its memory is saved, it waits in
# every clone of that template for one message on a virtio-serial port of its own, then gives the
# clone its own random generator, clock and name, and answers on the same port. An already running
# process costs a clone a few milliseconds; starting one (exec, perl's start-up, all of it translated
# afresh under TCG) cost ~0.25 s. Its own port keeps the guest agent out of the way: each agent
# command a fresh QEMU runs for the first time is translated afresh too (5-25 ms each).
#
# Frame (binary): "VMFX", a little-endian uint16 length, then the message: 64 bytes of host
# randomness, the host's time as two little-endian int64 (seconds, nanoseconds), then the hostname.
# Answer: "ok NAME\n" with the name read back after it was set last, or "failed STEP\n".
use strict;
mkdir "/run/vmfixtures", 0700;
$SIG{__DIE__} = sub {  # the host stops waiting for it at once
    if (open(my $f, ">", "/run/vmfixtures/freshen.failed")) { print $f @_; close $f; }
};
my $want = "org.vmfixtures.freshen.0";
my $dev;
for my $p (glob "/sys/class/virtio-ports/*") {
    open(my $n, "<", "$p/name") or next;
    my $name = <$n>;
    chomp $name;
    if ($name eq $want) { ($dev) = $p =~ m{([^/]+)$}; last; }
}
die "no virtio port named $want\n" unless $dev;
open(my $io, "+<", "/dev/$dev") or die "/dev/$dev: $!";
binmode $io;
open(my $rnd, "+<", "/dev/urandom") or die "urandom: $!";
# Rekey now, just before the template's memory is saved: its clones' generator is then seconds younger
# than the guest's uptime, and the kernel would not rekey it by itself for that long (its interval is
# half the uptime early on). Siblings that skipped the reseed below would draw the same numbers then,
# so the spec can tell.
ioctl($rnd, 0x5207, 0) or die "RNDRESEEDCRNG: $!";
open(my $ready, ">", "/run/vmfixtures/freshen.ready") or die "freshen.ready: $!";  # the host waits for it
close $ready;
$0 = "vmfixtures-freshen";

sub freshen {
    my ($msg) = @_;
    return "failed length" if length($msg) < 81;
    syswrite($rnd, substr($msg, 0, 64)) == 64 or return "failed entropy";
    ioctl($rnd, 0x5207, 0) or return "failed reseed";  # RNDRESEEDCRNG: rekey the generator from the pool now
    my ($sec, $ns) = unpack("q<q<", substr($msg, 64, 16));
    syscall(227, 0, pack("q<q<", $sec, $ns)) == 0 or return "failed clock";  # clock_settime(CLOCK_REALTIME), x86_64
    open(my $h, ">", "/proc/sys/kernel/hostname") or return "failed hostname";
    print $h substr($msg, 80);
    close $h or return "failed hostname";
    open($h, "<", "/proc/sys/kernel/hostname") or return "failed hostname";
    my $now = <$h>;
    chomp $now;
    return "ok $now";
}

my $buf = "";
while (1) {
    my $got = sysread($io, $buf, 4096, length $buf);
    unless ($got) { select(undef, undef, undef, 0.1); next; }  # no host end: nothing to wait on
    while (length($buf) >= 6) {
        if (substr($buf, 0, 4) ne "VMFX") { $buf = ""; last; }  # out of step: drop it, the host retries
        my $len = unpack("v", substr($buf, 4, 2));
        last if length($buf) < 6 + $len;
        my $answer = freshen(substr($buf, 6, $len));
        $buf = substr($buf, 6 + $len);
        syswrite($io, "$answer\n");
    }
}
