; A PC's whole operating system, for the boot tests: the BIOS (iPXE's int 13h SAN drive)
; loads this sector; it reads the counter in LBA 1, adds one, writes it back, prints
; "cowctl-boot counter=N" on COM1 and makes qemu exit through isa-debug-exit.
; nasm -f bin counter-boot.asm -o counter-boot.bin
bits 16
org 0x7c00

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    sti
    mov [drive], dl

    mov si, dap                 ; read LBA 1 into 0x0000:0x8000
    mov ah, 0x42
    mov dl, [drive]
    int 0x13
    jc .failed
    inc dword [0x8000]
    mov si, dap                 ; write it back
    mov ax, 0x4300
    mov dl, [drive]
    int 0x13
    jc .failed

    mov si, banner
    call puts
    mov eax, [0x8000]
    call putdec
    mov si, crlf
    call puts
    mov al, 0                   ; qemu exits with status (0 << 1) | 1 = 1
    out 0xf4, al
    jmp halt
.failed:
    mov si, failed
    call puts
    mov al, 1                   ; exit status 3
    out 0xf4, al
halt:
    hlt
    jmp halt

; Prints the NUL-terminated string at si on COM1.
puts:
    lodsb
    test al, al
    jz .done
    call putc
    jmp puts
.done:
    ret

; Sends al to COM1 once its transmitter is ready.
putc:
    push dx
    push ax
    mov dx, 0x3fd
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop ax
    mov dx, 0x3f8
    out dx, al
    pop dx
    ret

; Prints eax in decimal.
putdec:
    mov ebx, 10
    xor cx, cx
.digits:
    xor edx, edx
    div ebx
    push dx
    inc cx
    test eax, eax
    jnz .digits
.out:
    pop ax
    add al, '0'
    call putc
    loop .out
    ret

drive:  db 0
banner: db "cowctl-boot counter=", 0
failed: db "cowctl-boot disk error", 13, 10, 0
crlf:   db 13, 10, 0

align 4
dap:                            ; int 13h extended disk address packet
    db 0x10, 0
    dw 1                        ; one sector
    dw 0x8000, 0x0000           ; to 0000:8000
    dq 1                        ; LBA 1

times 510 - ($ - $$) db 0
dw 0xaa55
