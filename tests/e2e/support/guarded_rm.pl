#!/usr/bin/perl
# The fleet's guarded `rm`: installed as /usr/bin/rm inside every test host (so also /bin/rm
# and whatever `xargs`/`find -exec` run), it refuses any operand that resolves outside the
# directories a deploy may delete in, logs it to /var/log/shipit-e2e-rm.log and exits 1; the
# fixture fails the test when that log is not empty. So a deletion bug in a host script fails
# a test instead of emptying a host's (or, through a shared mount, the machine's) system dirs.
#
# An operand is resolved as `rm` sees it: its parent directory with symlinks resolved, then
# its last component (rm removes a symlink, not its target). Paths that do not exist yet are
# resolved from their deepest existing ancestor. Allowed: strictly below one of the roots
# below or a line of /etc/shipit-e2e-rm-allow; and `*.env*` files below /etc.
use strict;
use warnings;
no warnings "newline";
use Cwd ();

my $real = '/usr/lib/shipit-e2e/rm';
my @roots = qw(/opt /srv /var/www /var/lib /var/backups /var/tmp /home /tmp /run
  /etc/systemd /etc/nginx /root);
if (open my $f, '<', '/etc/shipit-e2e-rm-allow') {
    while (my $line = <$f>) {
        chomp $line;
        push @roots, $line if $line =~ m{^/.};
    }
}

sub normalize {
    my @out;
    for my $part (split m{/}, $_[0]) {
        next if $part eq '' || $part eq '.';
        if ($part eq '..') { pop @out; next; }
        push @out, $part;
    }
    return '/' . join('/', @out);
}

# realpath -m: the deepest existing ancestor resolved, the rest appended.
sub resolve {
    my ($path) = @_;
    my @parts = grep { $_ ne '' } split m{/}, $path;
    my @rest;
    while (1) {
        my $head = '/' . join('/', @parts);
        if (-e $head) {
            my $r = Cwd::realpath($head);
            return normalize(join('/', defined $r ? $r : $head, @rest));
        }
        return normalize($path) unless @parts;
        unshift @rest, pop @parts;
    }
}

sub target {
    my ($op) = @_;
    my $cwd = Cwd::getcwd() // '/';
    my $abs = $op =~ m{^/} ? $op : "$cwd/$op";
    return resolve($abs) if $abs =~ m{/$} || $abs =~ m{/\.\.?$};
    my ($dir, $base) = $abs =~ m{^(.*)/([^/]+)$}s;
    $dir = '/' if $dir eq '';
    my $parent = resolve($dir);
    return $parent eq '/' ? "/$base" : "$parent/$base";
}

sub allowed {
    my ($t) = @_;
    for my $root (@roots) {
        return 1 if index($t, "$root/") == 0 && length($t) > length($root) + 1;
    }
    return 1 if $t =~ m{^/etc/(?:[^/]+/)*[^/]*\.env[^/]*$}s;
    return 0;
}

my @refused;
my $options = 1;
for my $arg (@ARGV) {
    if ($options && $arg eq '--') { $options = 0; next; }
    next if $options && $arg =~ /^-./s;
    my $t = target($arg);
    push @refused, [$arg, $t] unless allowed($t);
}
if (@refused) {
    my $cwd = Cwd::getcwd() // '?';
    if (open my $log, '>>', '/var/log/shipit-e2e-rm.log') {
        for my $r (@refused) {
            my ($arg, $t) = @$r;
            s/\n/\\n/g for $arg, $t;
            print {$log} "refused rm of `$arg` (resolves to `$t`, cwd `$cwd`)\n";
        }
        close $log;
    }
    print STDERR "guarded rm: refused to remove $_->[0]\n" for @refused;
    exit 1;
}
exec { $real } 'rm', @ARGV or die "guarded rm: cannot run $real: $!\n";
